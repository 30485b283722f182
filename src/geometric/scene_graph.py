"""Scene clustering from the match graph.

Images are nodes; an edge joins two images whose verified inlier count reaches
``min_inliers``. Scenes are the graph's well-connected parts: a bridge (an edge whose removal
disconnects its component) that joins two groups of at least ``min_cluster_size`` images
each is cut, because a single image pair is the typical way two different scenes get glued
together (repetitive structure, a shared poster). Bridges to a lone image are kept: a view
matched to just one other view still belongs to its scene. Groups smaller than
``min_cluster_size`` become ``outliers``. Clusters are named ``cluster0``, ``cluster1``, …
(``submission.cluster_name``) by decreasing size, ties by their first image. Components and
bridges come from networkx.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import pandas as pd

from src.geometric.options import GRAPH_MIN_INLIERS, MIN_SCENE_SIZE
from src.submission import OUTLIER_SCENE, cluster_name


@dataclass(frozen=True)
class GraphConf:
    min_inliers: int = GRAPH_MIN_INLIERS  # verified inliers for an edge
    # smaller groups are outliers; a bridge between two groups this big is cut
    min_cluster_size: int = MIN_SCENE_SIZE

    def __post_init__(self) -> None:
        if self.min_inliers < 1 or self.min_cluster_size < 1:
            raise ValueError(f"GraphConf needs positive values, got {self}")


def match_graph(images: list[str], verified: pd.DataFrame, min_inliers: int) -> nx.Graph:
    """Nodes 0..n-1 (indices into ``images``); an edge per pair with at least
    ``min_inliers`` verified inliers. ``verified``: columns image_a, image_b, inliers
    (pairs of unknown images are an error)."""
    index = {name: i for i, name in enumerate(images)}
    graph = nx.Graph()
    graph.add_nodes_from(range(len(images)))
    for a, b, inliers in zip(verified["image_a"], verified["image_b"], verified["inliers"]):
        if a not in index or b not in index:
            raise ValueError(f"verified pair ({a}, {b}) names an image outside the dataset")
        if inliers >= min_inliers and a != b:
            graph.add_edge(index[a], index[b])
    return graph


def bridges_in_search_order(graph: nx.Graph) -> list[tuple[int, int]]:
    """The graph's bridges (edges whose removal disconnects their component) as (low, high)
    node pairs, in the order a depth-first search finishes them (roots and neighbours in
    ascending order; a bridge is finished with its deeper end, which finishes first).

    The order decides which of two overlapping weak bridges :func:`cut_weak_bridges` cuts,
    so it is fixed here rather than left to networkx's chain decomposition.
    """
    finished: dict[int, int] = {}
    for root in sorted(graph):
        if root not in finished:
            for node in nx.dfs_postorder_nodes(graph, root, sort_neighbors=sorted):
                finished[node] = len(finished)
    bridges = [(min(a, b), max(a, b)) for a, b in nx.bridges(graph)]
    return sorted(bridges, key=lambda edge: min(finished[edge[0]], finished[edge[1]]))


def _side_sizes(graph: nx.Graph, bridge: tuple[int, int]) -> tuple[int, int]:
    """Nodes on either side of ``bridge``: the components of its ends without it."""
    without = nx.restricted_view(graph, [], [bridge])
    return tuple(len(nx.node_connected_component(without, end)) for end in bridge)


def cut_weak_bridges(graph: nx.Graph, min_cluster_size: int) -> None:
    """Remove, in place, every bridge between two groups of ``min_cluster_size`` or more
    nodes, one at a time (each cut shrinks the sides of the others), first found first."""
    while True:
        weak = [bridge for bridge in bridges_in_search_order(graph)
                if min(_side_sizes(graph, bridge)) >= min_cluster_size]
        if not weak:
            return
        graph.remove_edge(*weak[0])


def cluster_match_graph(images: list[str], verified: pd.DataFrame,
                        conf: GraphConf = GraphConf()) -> dict[str, str]:
    """Scene name per image (see module doc). ``verified``: columns image_a, image_b,
    inliers (pairs of unknown images are an error)."""
    graph = match_graph(images, verified, conf.min_inliers)
    cut_weak_bridges(graph, conf.min_cluster_size)
    groups = [sorted(c) for c in nx.connected_components(graph)
              if len(c) >= conf.min_cluster_size]
    groups.sort(key=lambda c: (-len(c), c[0]))
    names = {name: OUTLIER_SCENE for name in images}
    for rank, group in enumerate(groups):
        for i in group:
            names[images[i]] = cluster_name(rank)
    return names


def scene_sizes(names: dict[str, str]) -> pd.Series:
    """Images per scene name, largest first (for logging)."""
    return pd.Series(list(names.values())).value_counts()

