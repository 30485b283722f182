"""Scene clustering from the match graph.

Images are nodes; an edge joins two images whose verified inlier count reaches
``min_inliers``. Scenes are the graph's well-connected parts: a bridge (an edge whose removal
disconnects its component) that joins two groups of at least ``min_cluster_size`` images
each is cut, because a single image pair is the typical way two different scenes get glued
together (repetitive structure, a shared poster). Bridges to a lone image are kept: a view
matched to just one other view still belongs to its scene. Groups smaller than
``min_cluster_size`` become ``outliers``. Clusters are named ``cluster0``, ``cluster1``, …
by decreasing size.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from src.geometric.options import GRAPH_MIN_INLIERS
from src.submission import OUTLIER_SCENE


@dataclass(frozen=True)
class GraphConf:
    min_inliers: int = GRAPH_MIN_INLIERS  # verified inliers for an edge
    min_cluster_size: int = 3  # smaller groups are outliers; bridges between groups this big are cut

    def __post_init__(self) -> None:
        if self.min_inliers < 1 or self.min_cluster_size < 1:
            raise ValueError(f"GraphConf needs positive values, got {self}")


def _components(n: int, adjacency: list[set[int]]) -> list[list[int]]:
    seen = [False] * n
    components = []
    for start in range(n):
        if seen[start]:
            continue
        stack, component = [start], []
        seen[start] = True
        while stack:
            node = stack.pop()
            component.append(node)
            for other in adjacency[node]:
                if not seen[other]:
                    seen[other] = True
                    stack.append(other)
        components.append(sorted(component))
    return components


def find_bridges(n: int, adjacency: list[set[int]]) -> list[tuple[int, int]]:
    """Edges whose removal disconnects their component (Tarjan's low-link, iterative)."""
    order = [-1] * n
    low = [0] * n
    bridges = []
    counter = 0
    for root in range(n):
        if order[root] != -1:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack = [(root, -1, iter(sorted(adjacency[root])))]
        while stack:
            node, parent, neighbours = stack[-1]
            advanced = False
            for other in neighbours:
                if other == parent:
                    continue
                if order[other] == -1:
                    order[other] = low[other] = counter
                    counter += 1
                    stack.append((other, node, iter(sorted(adjacency[other]))))
                    advanced = True
                    break
                low[node] = min(low[node], order[other])
            if not advanced:
                stack.pop()
                if parent != -1:
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        bridges.append((min(parent, node), max(parent, node)))
    return bridges


def _side_size(n: int, adjacency: list[set[int]], start: int, cut: tuple[int, int]) -> int:
    """Images reachable from ``start`` without crossing the edge ``cut``."""
    a, b = cut
    seen = {start}
    stack = [start]
    while stack:
        node = stack.pop()
        for other in adjacency[node]:
            if {node, other} == {a, b} or other in seen:
                continue
            seen.add(other)
            stack.append(other)
    return len(seen)


def cluster_match_graph(images: list[str], verified: pd.DataFrame,
                        conf: GraphConf = GraphConf()) -> dict[str, str]:
    """Scene name per image (see module doc). ``verified``: columns image_a, image_b,
    inliers (pairs of unknown images are an error)."""
    index = {name: i for i, name in enumerate(images)}
    n = len(images)
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for a, b, inliers in zip(verified["image_a"], verified["image_b"], verified["inliers"]):
        if a not in index or b not in index:
            raise ValueError(f"verified pair ({a}, {b}) names an image outside the dataset")
        if inliers >= conf.min_inliers and a != b:
            adjacency[index[a]].add(index[b])
            adjacency[index[b]].add(index[a])
    # Cut bridges between two big groups, one at a time: each cut can change the others.
    while True:
        weak = [(a, b) for a, b in find_bridges(n, adjacency)
                if min(_side_size(n, adjacency, a, (a, b)),
                       _side_size(n, adjacency, b, (a, b))) >= conf.min_cluster_size]
        if not weak:
            break
        a, b = weak[0]
        adjacency[a].discard(b)
        adjacency[b].discard(a)
    groups = [c for c in _components(n, adjacency) if len(c) >= conf.min_cluster_size]
    groups.sort(key=lambda c: (-len(c), c[0]))
    names = {name: OUTLIER_SCENE for name in images}
    for rank, group in enumerate(groups):
        for i in group:
            names[images[i]] = f"cluster{rank}"
    return names


def scene_sizes(names: dict[str, str]) -> pd.Series:
    """Images per scene name, largest first (for logging)."""
    return pd.Series(list(names.values())).value_counts()

