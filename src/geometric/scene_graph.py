"""Scene clustering from the match graph.

Images are nodes; an edge joins two images whose verified inlier count reaches
``min_inliers`` and carries that count as its weight (``inliers``). Scenes are the graph's
well-connected parts, found in two steps, both with networkx:

1. *Bridges.* A bridge (an edge whose removal disconnects its component) that joins two
   groups of at least ``min_cluster_size`` images each is cut, because a single image pair
   is the typical way two different scenes get glued together (repetitive structure, a
   shared poster). Bridges to a lone image are kept: a view matched to just one other view
   still belongs to its scene.
2. *Chance links.* With many pairs matched (all pairs of a 90-image dataset) two scenes are
   glued by hundreds of chance edges instead of one: pairs of unrelated photos whose best
   RANSAC model happens to fit 10-12 of ~25 putative matches. Each component is divided
   into weighted communities (Louvain, seeded), and neighbouring communities are joined
   again wherever one edge between them is *strong* (``strong_inliers`` or more, beyond the
   chance level), as are communities too small to be a scene (to the neighbour they share
   the strongest edge with). Groups linked by weak edges only stay apart.

Groups smaller than ``min_cluster_size`` become ``outliers``. Clusters are named
``cluster0``, ``cluster1``, … (``submission.cluster_name``) by decreasing size, ties by their
first image.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import pandas as pd

from src.geometric.options import GRAPH_MIN_INLIERS, GRAPH_STRONG_INLIERS, MIN_SCENE_SIZE
from src.submission import OUTLIER_SCENE, cluster_name


@dataclass(frozen=True)
class GraphConf:
    min_inliers: int = GRAPH_MIN_INLIERS  # verified inliers for an edge
    # smaller groups are outliers; a bridge between two groups this big is cut
    min_cluster_size: int = MIN_SCENE_SIZE
    # an edge this strong keeps two communities together; 0 = no community split
    strong_inliers: int = GRAPH_STRONG_INLIERS
    seed: int = 0  # Louvain's random generator

    def __post_init__(self) -> None:
        for name in ("min_inliers", "min_cluster_size", "strong_inliers", "seed"):
            value = getattr(self, name)
            low = 0 if name in ("strong_inliers", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"GraphConf.{name} must be an integer >= {low}, got "
                                 f"{value!r}")


def match_graph(images: list[str], verified: pd.DataFrame, min_inliers: int) -> nx.Graph:
    """Nodes 0..n-1 (indices into ``images``); an edge per pair with at least
    ``min_inliers`` verified inliers. ``verified``: columns image_a, image_b, inliers
    (pairs of unknown images are an error)."""
    index = {name: i for i, name in enumerate(images)}
    graph = nx.Graph()
    graph.add_nodes_from(range(len(images)))
    edges = []
    for a, b, inliers in zip(verified["image_a"], verified["image_b"], verified["inliers"]):
        if a not in index or b not in index:
            raise ValueError(f"verified pair ({a}, {b}) names an image outside the dataset")
        if inliers >= min_inliers and a != b:
            edges.append((min(index[a], index[b]), max(index[a], index[b]), int(inliers)))
    # In a fixed order, whatever the order of the table's rows: Louvain's communities
    # depend on the order of the edges.
    graph.add_weighted_edges_from(sorted(edges), weight="inliers")
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


def _strongest_links(graph: nx.Graph, group_of: dict[int, int]) -> dict[tuple[int, int], int]:
    """(group, group) -> the most inliers of an edge between the two groups."""
    links: dict[tuple[int, int], int] = {}
    for a, b, inliers in graph.edges(data="inliers", default=0):
        ga, gb = group_of[a], group_of[b]
        if ga != gb:
            key = (min(ga, gb), max(ga, gb))
            links[key] = max(links.get(key, 0), inliers)
    return links


def join_communities(graph: nx.Graph, communities: list[set[int]], strong_inliers: int,
                     min_cluster_size: int) -> list[set[int]]:
    """Communities of ``graph`` joined again where an edge between two of them has
    ``strong_inliers`` or more; then each group smaller than ``min_cluster_size`` (smallest
    first) joined to the neighbour it shares the strongest edge with. Deterministic for a
    given order of ``communities``."""
    groups = nx.utils.UnionFind(range(len(communities)))
    group_of = {node: k for k, community in enumerate(communities) for node in community}
    for (ga, gb), inliers in sorted(_strongest_links(graph, group_of).items()):
        if inliers >= strong_inliers:
            groups.union(ga, gb)
    while True:
        joined = [set().union(*(communities[k] for k in members))
                  for members in sorted(groups.to_sets(), key=min)]
        group_of = {node: k for k, group in enumerate(joined) for node in group}
        links = _strongest_links(graph, group_of)
        small = sorted((len(group), k) for k, group in enumerate(joined)
                       if len(group) < min_cluster_size
                       and any(k in pair for pair in links))
        if not small:
            return joined
        k = small[0][1]
        # Its strongest neighbour (ties: the one listed first).
        _, partner = max((inliers, -(a if b == k else b)) for (a, b), inliers in links.items()
                         if k in (a, b))
        groups.union(_community_of(min(joined[k]), communities),
                     _community_of(min(joined[-partner]), communities))


def _community_of(node: int, communities: list[set[int]]) -> int:
    return next(k for k, community in enumerate(communities) if node in community)


def split_chance_links(graph: nx.Graph, min_cluster_size: int, strong_inliers: int,
                       seed: int = 0) -> None:
    """Remove, in place, the edges between the groups of each component that only weak
    edges join (see the module doc, step 2)."""
    if strong_inliers <= 0:
        return
    for component in [sorted(c) for c in nx.connected_components(graph)]:
        if len(component) < 2 * min_cluster_size:
            continue  # too small to hold two scenes
        subgraph = graph.subgraph(component)
        communities = nx.community.louvain_communities(subgraph, weight="inliers", seed=seed)
        communities = sorted((set(c) for c in communities), key=min)
        if len(communities) < 2:
            continue
        groups = join_communities(subgraph, communities, strong_inliers, min_cluster_size)
        group_of = {node: k for k, group in enumerate(groups) for node in group}
        cut = [(a, b) for a, b in subgraph.edges if group_of[a] != group_of[b]]
        graph.remove_edges_from(cut)


def cluster_match_graph(images: list[str], verified: pd.DataFrame,
                        conf: GraphConf = GraphConf()) -> dict[str, str]:
    """Scene name per image (see module doc). ``verified``: columns image_a, image_b,
    inliers (pairs of unknown images are an error)."""
    graph = match_graph(images, verified, conf.min_inliers)
    cut_weak_bridges(graph, conf.min_cluster_size)
    split_chance_links(graph, conf.min_cluster_size, conf.strong_inliers, conf.seed)
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

