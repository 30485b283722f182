"""Pair selection: exhaustive for small datasets, top-k retrieval growing as k*N."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from src.pairs import PairsConf, select_pairs


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


def test_vlad_separates_images_with_different_local_statistics():
    from src.pairs import vlad_descriptors
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
