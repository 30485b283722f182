"""Match-graph clustering: components, weak bridges, outliers."""

from __future__ import annotations

import itertools

import networkx as nx
import pandas as pd
import pytest

from src.geometric.scene_graph import GraphConf, bridges_in_search_order, cluster_match_graph


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
