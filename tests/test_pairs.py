"""Pair selection: exhaustive for small datasets, top-k retrieval growing as k*N."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from src.geometric.pairs import PairsConf, select_pairs


def names(n):
    return [f"im{i:03d}.png" for i in range(n)]


def test_small_dataset_is_exhaustive_and_needs_no_descriptors():
    pairs = select_pairs(names(5), None, PairsConf(exhaustive_below=10))
    assert pairs == list(itertools.combinations(names(5), 2))
    assert select_pairs(names(1), None) == [] and select_pairs([], None) == []


def test_retrieval_finds_the_nearest_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    labels = np.repeat(np.arange(4), 10)
    descriptors = centres[labels] + 0.05 * rng.normal(size=(40, 32))
    pairs = select_pairs(names(40), descriptors, PairsConf(top_k=5, exhaustive_below=10))
    index = {n: i for i, n in enumerate(names(40))}
    assert all(labels[index[a]] == labels[index[b]] for a, b in pairs)
    assert len(set(pairs)) == len(pairs) and all(index[a] < index[b] for a, b in pairs)
    # every image has at least top_k partners
    degree = np.zeros(40, int)
    for a, b in pairs:
        degree[index[a]] += 1
        degree[index[b]] += 1
    assert degree.min() >= 5


@pytest.mark.parametrize("n", [40, 160, 640])
def test_pair_count_grows_as_k_times_n(n):
    rng = np.random.default_rng(n)
    pairs = select_pairs(names(n), rng.normal(size=(n, 16)), PairsConf(top_k=8, exhaustive_below=10))
    assert n * 8 / 2 <= len(pairs) <= n * 8


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one global descriptor per image"):
        select_pairs(names(40), np.zeros((3, 4)), PairsConf(exhaustive_below=10))
    with pytest.raises(ValueError, match="top_k"):
        PairsConf(top_k=0)


def test_several_descriptors_join_their_neighbour_lists():
    # Two descriptors that each see only one half of the truth: a knows that 0~1 and 2~3,
    # b that 0~2 and 1~3 (rows far apart otherwise).
    a = np.array([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0, 1, 0.01], [0, 0, 1]], float)
    b = np.array([[1, 0, 0], [0, 1, 0], [1, 0.01, 0], [0, 1, 0.01], [0, 0, 1]], float)
    conf = PairsConf(top_k=1, exhaustive_below=0)
    n = names(5)
    only_a, only_b = select_pairs(n, a, conf), select_pairs(n, b, conf)
    assert {(n[0], n[1]), (n[2], n[3])} <= set(only_a)
    assert {(n[0], n[2]), (n[1], n[3])} <= set(only_b)
    both = select_pairs(n, [a, b], conf)
    assert set(both) == set(only_a) | set(only_b)
    # no duplicates, a before b, and sorted by position, whichever array comes first
    assert both == sorted(set(both), key=lambda p: (n.index(p[0]), n.index(p[1])))
    assert select_pairs(n, (b, a), conf) == both
    # arrays of different widths, one descriptor per image each
    wide = np.concatenate([b, np.zeros((5, 7))], axis=1)
    assert select_pairs(n, [a, wide], conf) == both
    with pytest.raises(ValueError, match="one global descriptor per image"):
        select_pairs(n, [a, b[:4]], conf)
    with pytest.raises(ValueError, match="one global descriptor per image"):
        select_pairs(n, [], conf)


def test_vlad_separates_images_with_different_local_statistics():
    from src.geometric.pairs import vlad_descriptors
    rng = np.random.default_rng(1)
    modes = rng.normal(size=(2, 6, 16)) * 3  # two "scenes", each with its own local patterns
    local = []
    for i in range(10):
        scene = i % 2
        picks = rng.integers(0, 6, size=80)
        local.append(modes[scene][picks] + 0.1 * rng.normal(size=(80, 16)))
    local.append(np.zeros((0, 16)))  # an image without features
    g = vlad_descriptors(local, n_words=8, seed=0)
    assert g.shape == (11, 8 * 16)
    np.testing.assert_allclose(np.linalg.norm(g[:10], axis=1), 1.0)
    assert np.all(g[10] == 0)
    sim = g[:10] @ g[:10].T
    same = [sim[i, j] for i in range(10) for j in range(10) if i != j and i % 2 == j % 2]
    other = [sim[i, j] for i in range(10) for j in range(10) if i % 2 != j % 2]
    assert min(same) > max(other)


# --------------------------------------------------------------------------- pair recall
def test_pair_recall_of_a_hand_computed_case():
    from src.geometric.pairs import covisible_pairs, pair_recall, pair_recall_counts
    # scene s: a b c (3 pairs), scene t: d e (1 pair), f is an outlier -> 4 co-visible pairs
    scene_of = {"a": "s", "b": "s", "c": "s", "d": "t", "e": "t", "f": "outliers"}
    assert covisible_pairs(scene_of) == {("a", "b"), ("a", "c"), ("b", "c"), ("d", "e")}
    pairs = [("a", "b"), ("c", "d"), ("d", "e"), ("a", "f")]  # 2 right, 2 across / outlier
    assert pair_recall_counts(pairs, scene_of) == (2, 4)
    assert pair_recall(pairs, scene_of) == 0.5
    assert pair_recall([], scene_of) == 0.0


def test_exhaustive_pairs_have_recall_one_and_order_does_not_matter():
    from src.geometric.pairs import pair_recall
    scene_of = {n: ("outliers" if i % 7 == 0 else f"scene{i % 3}")
                for i, n in enumerate(names(40))}
    exhaustive = select_pairs(names(40), None, PairsConf(exhaustive_below=40))
    assert pair_recall(exhaustive, scene_of) == 1.0
    some = exhaustive[::3]
    swapped = [(b, a) for a, b in some]
    assert pair_recall(swapped, scene_of) == pair_recall(some, scene_of)
    assert pair_recall(some + swapped + some, scene_of) == pair_recall(some, scene_of)


def test_outliers_and_unlabelled_images_never_make_a_ground_truth_pair():
    from src.geometric.pairs import pair_recall, pair_recall_counts
    scene_of = {"a": "s", "b": "s", "x": "outliers", "y": "outliers"}
    # two outliers share the label "outliers" but are not a scene
    assert pair_recall_counts([("x", "y"), ("a", "x"), ("a", "z"), ("a", "a")],
                              scene_of) == (0, 1)
    assert pair_recall([("b", "a"), ("x", "y")], scene_of) == 1.0
    # a custom outlier label
    assert pair_recall_counts([("a", "b")], {"a": "junk", "b": "junk"},
                              outlier_scene="junk") == (0, 0)


def test_recall_is_nan_without_any_co_visible_pair():
    from src.geometric.pairs import pair_recall
    assert np.isnan(pair_recall([("a", "b")], {"a": "s", "b": "t", "c": "outliers"}))
    assert np.isnan(pair_recall([], {}))


def test_retrieval_forced_below_the_exhaustive_size_recalls_separable_scenes():
    # with exhaustive_below=0 even a small dataset goes through retrieval: k*N pairs, and
    # descriptors that separate the scenes find every pair once k covers a scene
    from src.geometric.pairs import pair_recall
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 6)
    descriptors = rng.normal(size=(3, 16))[labels] + 0.01 * rng.normal(size=(18, 16))
    scene_of = dict(zip(names(18), (f"s{v}" for v in labels)))
    few = select_pairs(names(18), descriptors, PairsConf(top_k=2, exhaustive_below=0))
    full = select_pairs(names(18), descriptors, PairsConf(top_k=5, exhaustive_below=0))
    assert len(few) < 18 * 17 // 2
    assert 0 < pair_recall(few, scene_of) < 1
    assert pair_recall(full, scene_of) == 1.0
