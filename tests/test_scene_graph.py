"""Match-graph clustering: components, weak bridges, chance links, outliers."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from src.geometric.scene_graph import (GraphConf, bridges_in_search_order, cluster_match_graph,
                                       join_communities)


def clique(prefix, n, inliers=100):
    imgs = [f"{prefix}{i}" for i in range(n)]
    return imgs, [(a, b, inliers) for a, b in itertools.combinations(imgs, 2)]


def frame(edges):
    return pd.DataFrame(edges, columns=["image_a", "image_b", "inliers"])


def test_two_scenes_joined_by_a_single_bridge_stay_apart():
    a, ea = clique("a", 6)
    b, eb = clique("b", 5)
    bridge = [("a0", "b0", 500)]  # even a strong single link is one pair only
    names = cluster_match_graph(a + b, frame(ea + eb + bridge))
    assert {names[x] for x in a} == {"cluster0"} and {names[x] for x in b} == {"cluster1"}


def test_two_links_between_scenes_merge_them():
    a, ea = clique("a", 6)
    b, eb = clique("b", 5)
    links = [("a0", "b0", 100), ("a1", "b1", 100)]
    names = cluster_match_graph(a + b, frame(ea + eb + links))
    assert set(names.values()) == {"cluster0"}


def test_weak_edges_lone_images_and_small_groups():
    a, ea = clique("a", 4)
    extra = [("a0", "leaf", 40),  # a view matched to one other view: kept
             ("a1", "weak", 5),  # below min_inliers: no edge
             ("p", "q", 100)]  # a pair on its own: too small for a scene
    names = cluster_match_graph(a + ["leaf", "weak", "p", "q", "alone"], frame(ea + extra),
                                GraphConf(min_inliers=20, min_cluster_size=3))
    assert names["leaf"] == "cluster0" and all(names[x] == "cluster0" for x in a)
    assert names["weak"] == names["p"] == names["q"] == names["alone"] == "outliers"


def test_no_edges_and_single_image():
    assert cluster_match_graph(["x"], frame([])) == {"x": "outliers"}
    assert cluster_match_graph([], frame([])) == {}


def test_bridges_of_a_path_and_a_cycle():
    path = nx.Graph([(0, 1), (1, 2)])
    assert sorted(bridges_in_search_order(path)) == [(0, 1), (1, 2)]
    cycle = nx.Graph([(0, 1), (1, 2), (2, 0)])
    assert bridges_in_search_order(cycle) == []


def test_bridges_come_in_the_order_a_depth_first_search_finishes_them():
    # 0 - 1 - 2 - 3 with the search from 0: the deepest bridge finishes first.
    graph = nx.Graph([(2, 3), (1, 2), (0, 1)])
    assert bridges_in_search_order(graph) == [(2, 3), (1, 2), (0, 1)]


def test_an_image_between_two_scenes_goes_with_the_scene_listed_first():
    # a0-a2 - m - c0-c2: both single links are weak bridges; cutting one keeps m on the
    # other side, and which one is cut first is the search order's choice (pinned here so
    # that the clusters do not change under a refactor).
    a, ea = clique("a", 3)
    c, ec = clique("c", 3)
    links = [("a2", "m", 100), ("m", "c0", 100)]
    names = cluster_match_graph(a + ["m"] + c, frame(ea + ec + links))
    assert {names[x] for x in a + ["m"]} == {"cluster0"} and {names[x] for x in c} == {"cluster1"}
    names = cluster_match_graph(c + ["m"] + a, frame(ea + ec + links))
    assert {names[x] for x in c + ["m"]} == {"cluster0"} and {names[x] for x in a} == {"cluster1"}


def test_unknown_image_in_pairs_is_an_error():
    with pytest.raises(ValueError, match="outside the dataset"):
        cluster_match_graph(["a"], frame([("a", "z", 50)]))


def chance_links(first, second, count, seed=0):
    """``count`` weak edges (10-12 inliers: the chance level) between random images of two
    groups, as exhaustive matching of unrelated photos gives."""
    rng = np.random.default_rng(seed)
    pairs = {(first[rng.integers(len(first))], second[rng.integers(len(second))])
             for _ in range(count)}
    return [(a, b, int(rng.integers(10, 13))) for a, b in sorted(pairs)]


def test_scenes_glued_by_many_chance_links_stay_apart():
    a, ea = clique("a", 8)
    b, eb = clique("b", 7, inliers=60)
    c, ec = clique("c", 6, inliers=200)
    links = chance_links(a, b, 20) + chance_links(b, c, 15, seed=1) + chance_links(a, c, 15, 2)
    names = cluster_match_graph(a + b + c, frame(ea + eb + ec + links))
    assert [{names[x] for x in group} for group in (a, b, c)] == [
        {"cluster0"}, {"cluster1"}, {"cluster2"}]
    # Without the community step the chance links make them one scene.
    glued = cluster_match_graph(a + b + c, frame(ea + eb + ec + links),
                                GraphConf(strong_inliers=0))
    assert set(glued.values()) == {"cluster0"}


def test_one_strong_edge_among_the_chance_links_keeps_the_groups_together():
    a, ea = clique("a", 8)
    b, eb = clique("b", 7)
    links = chance_links(a, b, 20) + [("a0", "b0", 15)]
    names = cluster_match_graph(a + b, frame(ea + eb + links))
    assert set(names.values()) == {"cluster0"}


def test_a_ring_of_views_is_one_scene_though_its_communities_are_arcs():
    # 24 views around an object: neighbours share many matches, views two apart fewer, the
    # far side none. Louvain cuts the ring into arcs; strong edges join them again.
    views = [f"v{k:02d}" for k in range(24)]
    edges = [(views[k], views[(k + 1) % 24], 80) for k in range(24)]
    edges += [(views[k], views[(k + 2) % 24], 25) for k in range(24)]
    graph = nx.Graph()
    graph.add_weighted_edges_from(((int(a[1:]), int(b[1:]), w) for a, b, w in edges),
                                  weight="inliers")
    assert len(nx.community.louvain_communities(graph, weight="inliers", seed=0)) > 1
    names = cluster_match_graph(views, frame(edges))
    assert set(names.values()) == {"cluster0"}


def test_a_small_weakly_linked_group_stays_with_its_scene():
    # Two views that match each other well and the scene only weakly: too few for a scene
    # of their own, so they follow their strongest link instead of becoming outliers.
    a, ea = clique("a", 8)
    pair = [("p", "q", 200), ("p", "a0", 11), ("q", "a1", 12), ("q", "a2", 10)]
    names = cluster_match_graph(a + ["p", "q"], frame(ea + pair))
    assert set(names.values()) == {"cluster0"}


def test_join_communities_follows_strong_edges_then_attaches_small_groups():
    graph = nx.Graph()
    graph.add_edge(0, 1, inliers=100)
    graph.add_edge(1, 2, inliers=20)  # strong: {0, 1} and {2, 3} join
    graph.add_edge(2, 3, inliers=100)
    graph.add_edge(3, 4, inliers=11)  # weak: {4, 5, 6} stays apart
    graph.add_edge(4, 5, inliers=100)
    graph.add_edge(5, 6, inliers=100)
    graph.add_edge(6, 7, inliers=12)  # {7} is too small: it joins {4, 5, 6}
    communities = [{0, 1}, {2, 3}, {4, 5, 6}, {7}]
    assert join_communities(graph, communities, strong_inliers=15, min_cluster_size=3) == [
        {0, 1, 2, 3}, {4, 5, 6, 7}]


def test_graph_conf_is_checked():
    with pytest.raises(ValueError, match="strong_inliers"):
        GraphConf(strong_inliers=-1)
    with pytest.raises(ValueError, match="min_inliers"):
        GraphConf(min_inliers=0)


def test_join_communities_leaves_isolated_groups_and_breaks_ties_by_order():
    graph = nx.Graph()
    graph.add_nodes_from(range(8))
    for a, b in [(0, 1), (1, 2), (4, 5), (5, 6)]:
        graph.add_edge(a, b, inliers=100)
    graph.add_edge(3, 2, inliers=12)  # {3} ties between {0, 1, 2} and {4, 5, 6}
    graph.add_edge(3, 4, inliers=12)
    communities = [{0, 1, 2}, {3}, {4, 5, 6}, {7}]  # {7} has no edge at all
    groups = join_communities(graph, communities, strong_inliers=15, min_cluster_size=3)
    assert groups == [{0, 1, 2, 3}, {4, 5, 6}, {7}]
