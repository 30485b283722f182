"""Matching and verification: mutual NN + ratio test, F against true poses, the HDF5 cache."""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pandas as pd
import pytest

from src.geometric import matching
from src.geometric.h5cache import partial_path
from src.geometric.features import FeatureConf, extract_dataset, load_all_features, load_features
from src.geometric.matching import (MatchConf, load_pair, load_verified_matches, match_and_verify,
                          match_descriptors, verify_matches)
from src.data_io import write_image_rgb

from src.geometry import fundamental_from_poses
from tests.demo_views import HEIGHT, WIDTH, render_scene_views


def epipolar_distance(F: np.ndarray, x_a: np.ndarray, x_b: np.ndarray) -> np.ndarray:
    """Mean of the two point-to-epipolar-line distances (pixels) per correspondence."""
    h_a = np.c_[x_a, np.ones(len(x_a))]
    h_b = np.c_[x_b, np.ones(len(x_b))]
    lines_b, lines_a = h_a @ F.T, h_b @ F
    residual = np.abs(np.sum(h_b * lines_b, axis=1))
    return 0.5 * (residual / np.linalg.norm(lines_b[:, :2], axis=1)
                  + residual / np.linalg.norm(lines_a[:, :2], axis=1))


@pytest.fixture(scope="module")
def scenes():
    """Name -> (image, K, R_cw, t_cw): two views of scene A, one of scene B, a blank."""
    (a0, a1) = render_scene_views(seed=0, sideways_steps=[0.0, 0.5])
    (b0,) = render_scene_views(seed=1, sideways_steps=[0.0])
    blank = (np.full((HEIGHT, WIDTH, 3), 90, np.uint8), None, None, None)
    return {"a0.png": a0, "a1.png": a1, "b0.png": b0, "blank.png": blank}


@pytest.fixture(scope="module")
def features_path(scenes, tmp_path_factory):
    root = tmp_path_factory.mktemp("matching")
    for name, (image, *_pose) in scenes.items():
        write_image_rgb(root / "images" / name, image)
    conf = FeatureConf()
    return extract_dataset(root / "images", list(scenes), conf,
                           root / f"features-{conf.cache_key()}.h5")


@pytest.fixture(scope="module")
def features(features_path):
    return load_all_features(features_path)


PAIRS = [("a0.png", "a1.png"), ("a0.png", "b0.png"), ("a1.png", "blank.png"),
         ("a1.png", "b0.png")]


class MatchCounter:
    """Wraps matching.match_descriptors, counting calls; optionally fails on call n, or on
    the pair whose descriptors equal ``fail_on_pair`` (pairs are matched side by side in
    threads, so which pair a call number falls on is not fixed)."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None,
                 fail_on_pair: tuple[np.ndarray, np.ndarray] | None = None):
        self.calls = 0
        original = matching.match_descriptors
        counter = self
        lock = threading.Lock()

        def counted(desc_a, desc_b, conf):
            with lock:
                counter.calls += 1
                failing = counter.calls == fail_on_call
            if fail_on_pair is not None:
                failing |= (np.array_equal(desc_a, fail_on_pair[0])
                            and np.array_equal(desc_b, fail_on_pair[1]))
            if failing:
                raise RuntimeError("simulated crash")
            return original(desc_a, desc_b, conf)

        monkeypatch.setattr(matching, "match_descriptors", counted)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field, value", [("verifier", "loransac"), ("ratio", 0.0),
                                          ("ratio", 1.5), ("min_matches", -1),
                                          ("mutual", "yes"), ("confidence", 1.0),
                                          ("ransac_threshold_px", 0), ("max_iterations", 0)])
def test_bad_configuration_is_refused(field, value):
    with pytest.raises(ValueError, match=f"MatchConf.{field}"):
        MatchConf(**{field: value})


def test_cache_key_is_stable_and_depends_on_every_field():
    assert MatchConf().cache_key() == MatchConf().cache_key()
    assert MatchConf().cache_key().startswith("mnn0.8-opencv-magsac-")
    confs = [MatchConf(), MatchConf(ratio=0.9), MatchConf(mutual=False),
             MatchConf(min_matches=20), MatchConf(verifier="pycolmap"),
             MatchConf(ransac_threshold_px=2.0), MatchConf(confidence=0.999),
             MatchConf(max_iterations=500), MatchConf(min_inliers=30)]
    assert len({conf.cache_key() for conf in confs}) == len(confs)


# --------------------------------------------------------------------------- descriptors
def test_mutual_nearest_neighbours_recover_known_correspondences():
    rng = np.random.default_rng(0)
    desc_a = rng.normal(size=(60, 32)).astype(np.float32)
    # b: a shuffled noisy copy of the first 40 rows of a, plus 25 unrelated descriptors
    order = rng.permutation(40)
    desc_b = np.concatenate([desc_a[order] + 0.05 * rng.normal(size=(40, 32)),
                             rng.normal(size=(25, 32))]).astype(np.float32)
    matches = match_descriptors(desc_a, desc_b, MatchConf())
    assert matches.dtype == np.int32 and matches.shape[1] == 2
    expected = {(int(a), int(b)) for b, a in enumerate(order)}
    assert {tuple(m) for m in matches.tolist()} == expected


def _reference_matches(desc_a, desc_b, ratio: float, mutual: bool) -> set:
    """Mutual nearest neighbours with Lowe's ratio test, from SciPy's pairwise distances."""
    from scipy.spatial.distance import cdist
    dist = cdist(desc_a.astype(np.float64), desc_b.astype(np.float64))
    found = set()
    for i, row in enumerate(dist):
        j, second = np.argsort(row)[:2]
        if row[j] >= ratio * row[second]:
            continue
        if mutual and np.argmin(dist[:, j]) != i:
            continue
        found.add((i, int(j)))
    return found


@pytest.mark.parametrize("unit_norm", [True, False])
def test_matches_agree_with_a_scipy_reference_for_unit_and_free_norms(unit_norm):
    """Unit-norm descriptors (RootSIFT) take the dot-product path, others the distance
    path; both give SciPy's mutual ratio-test matches, also when the work array of a larger
    pair is reused for a smaller one."""
    rng = np.random.default_rng(3)
    for n_a, n_b in ((300, 420), (120, 90)):
        desc_a = np.abs(rng.normal(size=(n_a, 128))).astype(np.float32)
        desc_b = np.concatenate([desc_a[rng.permutation(n_a)[:n_b // 2]]
                                 + 0.1 * np.abs(rng.normal(size=(n_b // 2, 128))),
                                 np.abs(rng.normal(size=(n_b - n_b // 2, 128)))]
                                ).astype(np.float32)
        if unit_norm:
            desc_a /= np.linalg.norm(desc_a, axis=1, keepdims=True)
            desc_b /= np.linalg.norm(desc_b, axis=1, keepdims=True)
        else:
            desc_a *= rng.uniform(0.5, 2.0, size=(n_a, 1)).astype(np.float32)
        for mutual in (True, False):
            conf = MatchConf(ratio=0.9, mutual=mutual)
            got = {tuple(m) for m in match_descriptors(desc_a, desc_b, conf).tolist()}
            assert got == _reference_matches(desc_a, desc_b, 0.9, mutual)
            assert len(got) > n_b // 8


def test_unit_norm_descriptors_take_the_product_path_with_the_same_ties_and_edges(monkeypatch):
    calls = []
    original = matching._match_equal_norms
    monkeypatch.setattr(matching, "_match_equal_norms",
                        lambda *args: calls.append(1) or original(*args))
    # two identical rows tie for b0: one match, the first row
    desc_a = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    desc_b = np.array([[0.8, 0.6], [-1.0, 0.0]], np.float32)
    assert match_descriptors(desc_a, desc_b, MatchConf()).tolist() == [[0, 0]]
    # a single descriptor in b: no second neighbour, the ratio test passes
    assert match_descriptors(desc_a[:1], desc_b[:1], MatchConf()).tolist() == [[0, 0]]
    # nearest at distance 0.63, second at 1.41: ratio 0.45 passes 0.5, fails 0.4
    desc_b = np.array([[0.8, 0.6], [0.0, 1.0]], np.float32)
    assert match_descriptors(desc_a[:1], desc_b, MatchConf(ratio=0.5)).tolist() == [[0, 0]]
    assert len(match_descriptors(desc_a[:1], desc_b, MatchConf(ratio=0.4))) == 0
    assert len(calls) == 4
    assert match_descriptors(desc_a[:0], desc_b, MatchConf()).shape == (0, 2)
    # the work array lives from pair to pair within one matching call, then is let go
    with matching._scratch_released():
        match_descriptors(desc_a, desc_b, MatchConf())
        assert matching._scratch.flat is not None
    assert matching._scratch.flat is None


def test_non_mutual_and_ambiguous_matches_are_rejected():
    # a0 and a1 both have b0 as nearest neighbour, but b0's nearest is a1
    desc_a = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    desc_b = np.array([[0.9, 0.0], [10.0, 10.0]], np.float32)
    assert match_descriptors(desc_a, desc_b, MatchConf()).tolist() == [[1, 0]]
    assert match_descriptors(desc_a, desc_b, MatchConf(mutual=False)).tolist() == \
        [[0, 0], [1, 0]]
    # nearest at 1.0, second nearest at 1.1: ratio 0.91 fails 0.8 but passes 0.95
    desc_a = np.array([[0.0, 0.0]], np.float32)
    desc_b = np.array([[1.0, 0.0], [-1.1, 0.0]], np.float32)
    assert len(match_descriptors(desc_a, desc_b, MatchConf(ratio=0.8))) == 0
    assert match_descriptors(desc_a, desc_b, MatchConf(ratio=0.95)).tolist() == [[0, 0]]


def test_tied_rows_give_one_match_per_column():
    desc_a = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    desc_b = np.array([[0.0, 0.1], [5.0, 5.0]], np.float32)
    assert match_descriptors(desc_a, desc_b, MatchConf()).tolist() == [[0, 0]]


def test_empty_and_single_descriptor_sets():
    some = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    empty = np.zeros((0, 8), np.float32)
    for a, b in [(empty, some), (some, empty), (empty, empty)]:
        matches = match_descriptors(a, b, MatchConf())
        assert matches.shape == (0, 2) and matches.dtype == np.int32
    # a single descriptor in b has no second neighbour: the ratio test cannot reject it
    assert match_descriptors(some, some[2:3], MatchConf()).tolist() == [[2, 0]]
    with pytest.raises(ValueError, match="one D"):
        match_descriptors(some, np.zeros((3, 4), np.float32), MatchConf())


# --------------------------------------------------------------------------- verification
@pytest.mark.parametrize("verifier", ["opencv-magsac", "pycolmap"])
def test_same_scene_pair_verifies_with_the_true_epipolar_geometry(scenes, features, verifier):
    conf = MatchConf(verifier=verifier)
    fa, fb = features["a0.png"], features["a1.png"]
    matches = match_descriptors(fa.descriptors, fb.descriptors, conf)
    mask, F = verify_matches(fa.keypoints, fb.keypoints, matches, conf,
                             image_sizes=(fa.image_size, fb.image_size))
    assert mask.shape == (len(matches),) and mask.dtype == bool
    assert mask.sum() >= 100 and mask.mean() > 0.8
    F_true = fundamental_from_poses(*scenes["a0.png"][1:], *scenes["a1.png"][1:])
    inliers = matches[mask]
    x_a, x_b = fa.keypoints[inliers[:, 0]], fb.keypoints[inliers[:, 1]]
    assert epipolar_distance(F_true, x_a, x_b).mean() < 1.0
    # the estimated F agrees with the true one on the matches the truth calls correct
    putative_a, putative_b = fa.keypoints[matches[:, 0]], fb.keypoints[matches[:, 1]]
    correct = epipolar_distance(F_true, putative_a, putative_b) < 1.0
    assert F is not None and F.shape == (3, 3)
    assert epipolar_distance(F, putative_a[correct], putative_b[correct]).mean() < 1.0
    assert np.mean(mask[correct]) > 0.9


def test_different_scene_pair_is_rejected(features):
    conf = MatchConf()
    fa, fb = features["a0.png"], features["b0.png"]
    matches = match_descriptors(fa.descriptors, fb.descriptors, conf)
    mask, F = verify_matches(fa.keypoints, fb.keypoints, matches, conf)
    assert len(matches) < 50
    assert mask.sum() < conf.min_inliers and F is None


def test_too_few_matches_give_no_inliers(features):
    fa, fb = features["a0.png"], features["a1.png"]
    matches = match_descriptors(fa.descriptors, fb.descriptors, MatchConf())[:7]
    mask, F = verify_matches(fa.keypoints, fb.keypoints, matches,
                             MatchConf(min_matches=0, min_inliers=0))
    assert mask.shape == (7,) and not mask.any() and F is None
    mask, F = verify_matches(fa.keypoints, fb.keypoints, np.zeros((0, 2), np.int32))
    assert mask.shape == (0,) and F is None


# --------------------------------------------------------------------------- the stage
def test_match_and_verify_table_and_cache(features_path, features, tmp_path):
    conf = MatchConf()
    cache = tmp_path / f"matches-{conf.cache_key()}.h5"
    table = match_and_verify(features_path, PAIRS, conf, cache)
    assert list(table.columns) == ["image_a", "image_b", "matches", "inliers"]
    assert list(zip(table.image_a, table.image_b)) == PAIRS
    by_pair = table.set_index(["image_a", "image_b"])
    assert by_pair.loc[("a0.png", "a1.png"), "inliers"] >= 100
    assert by_pair.loc[("a0.png", "b0.png"), "inliers"] < conf.min_inliers
    assert by_pair.loc[("a1.png", "b0.png"), "inliers"] < conf.min_inliers
    assert tuple(by_pair.loc[("a1.png", "blank.png")]) == (0, 0)

    verified = load_verified_matches(cache)
    assert set(verified) == set(PAIRS)
    for image_a, image_b, n_matches, n_inliers in table.itertuples(index=False):
        putative, inliers, F = load_pair(cache, image_a, image_b)
        assert len(putative) == n_matches and len(inliers) == n_inliers
        assert putative.dtype == inliers.dtype == np.int32
        np.testing.assert_array_equal(verified[(image_a, image_b)], inliers)
        assert (F is None) == (n_inliers == 0)
        # inliers are a subset of the putative matches, indices within the keypoints
        assert {tuple(m) for m in inliers.tolist()} <= {tuple(m) for m in putative.tolist()}
        if len(putative):
            assert putative[:, 0].max() < len(features[image_a])
            assert putative[:, 1].max() < len(features[image_b])
    with h5py.File(cache) as h5:  # one batch of the pairs in order, its arrays as documented
        batch = h5["batches/0"]
        assert batch.attrs["complete"]
        assert [tuple(row) for row in batch["names"].asstr()[()]] == PAIRS
        np.testing.assert_array_equal(batch["counts"][()], table[["matches", "inliers"]])
        assert batch["inliers"].shape == (table["inliers"].sum(), 2)
        assert batch["matches"].shape == (table["matches"].sum(), 2)
        assert batch["F"].shape == (len(PAIRS), 3, 3)
    with pytest.raises(KeyError, match="b0.png"):
        load_pair(cache, "b0.png", "a0.png")


def test_second_call_skips_and_overwrite_recomputes(features_path, tmp_path, monkeypatch):
    conf = MatchConf()
    cache = tmp_path / "matches.h5"
    counter = MatchCounter(monkeypatch)
    first = match_and_verify(features_path, PAIRS, conf, cache)
    assert counter.calls == len(PAIRS)
    mtime = os.stat(cache).st_mtime_ns
    again = match_and_verify(features_path, PAIRS, conf, cache)
    assert counter.calls == len(PAIRS) and os.stat(cache).st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first, again)
    match_and_verify(features_path, PAIRS, conf, cache, overwrite=True)
    assert counter.calls == 2 * len(PAIRS)
    # new pairs are added; the old ones are not redone; duplicates are matched once
    more = PAIRS + [("b0.png", "a0.png"), ("a0.png", "a1.png")]
    table = match_and_verify(features_path, more, conf, cache)
    assert counter.calls == 2 * len(PAIRS) + 1
    assert len(table) == len(more)


def test_a_crash_leaves_no_half_written_cache_and_the_rerun_resumes(features_path, tmp_path,
                                                                     monkeypatch):
    conf = MatchConf()
    cache = tmp_path / "matches.h5"
    third_a, third_b = (load_features(features_path, name).descriptors for name in PAIRS[2])
    with monkeypatch.context() as patch:
        MatchCounter(patch, fail_on_pair=(third_a, third_b))
        with pytest.raises(RuntimeError, match="simulated crash"):
            match_and_verify(features_path, PAIRS, conf, cache)
    assert not cache.exists()
    counter = MatchCounter(monkeypatch)
    table = match_and_verify(features_path, PAIRS, conf, cache)
    assert counter.calls == len(PAIRS) - 2  # the two pairs before the crash are kept
    assert list(zip(table.image_a, table.image_b)) == PAIRS
    assert set(load_verified_matches(cache)) == set(PAIRS)


def test_pairs_across_batches_read_back_and_a_rerun_resumes_from_whole_batches(
        features_path, tmp_path, monkeypatch):
    """Batches of two: each pair is read back from its own rows; an unfinished batch left by
    an interrupted run is dropped and its key written again; a pair stored again (as the
    rotation retry does) is read from the later batch."""
    conf = MatchConf()
    monkeypatch.setattr(matching, "PAIRS_PER_BATCH", 2)
    one_batch = match_and_verify(features_path, PAIRS, conf, tmp_path / "one.h5")
    expected = {pair: load_pair(tmp_path / "one.h5", *pair) for pair in PAIRS}
    cache = tmp_path / "batched.h5"
    table = match_and_verify(features_path, PAIRS, conf, cache)
    pd.testing.assert_frame_equal(table, one_batch)
    with h5py.File(cache) as h5:
        assert sorted(h5["batches"], key=int) == ["0", "1"]
    for pair, (putative, inliers, F) in expected.items():
        got = load_pair(cache, *pair)
        np.testing.assert_array_equal(got[0], putative)
        np.testing.assert_array_equal(got[1], inliers)
        assert (got[2] is None) == (F is None)
    # an interrupted run's work copy: batch 0 whole, batch 1 unfinished
    partial = partial_path(cache)
    os.replace(cache, partial)
    with h5py.File(partial, "a") as h5:
        del h5["batches/1"].attrs["complete"]
    counter = MatchCounter(monkeypatch)
    again = match_and_verify(features_path, PAIRS, conf, cache)
    assert counter.calls == 2  # the pairs of the unfinished batch only
    pd.testing.assert_frame_equal(again, one_batch)
    with h5py.File(cache) as h5:
        assert sorted(h5["batches"], key=int) == ["0", "1"]
    # a pair stored again later is read from there
    with h5py.File(cache, "a") as h5:
        writer = matching._PairWriter(h5)
        writer.add(*PAIRS[0], np.zeros((0, 2), np.int32), np.zeros((0, 2), np.int32), None)
        writer.flush()
        with pytest.raises(ValueError, match="unknown pair columns"):
            writer.add(*PAIRS[0], np.zeros((0, 2)), np.zeros((0, 2)), None, turn_A=90)
    assert len(load_verified_matches(cache)[PAIRS[0]]) == 0
    assert len(load_verified_matches(cache)[PAIRS[1]]) == len(expected[PAIRS[1]][1])


def test_a_cache_of_the_older_layout_is_refused_by_name(tmp_path):
    cache = tmp_path / "old.h5"
    with h5py.File(cache, "w") as h5:
        h5.create_group("a0.png/a1.png").attrs["F"] = np.eye(3)
    with pytest.raises(ValueError, match="old.h5 is a matches cache of an older layout"):
        load_verified_matches(cache)


def test_bad_pairs_and_mismatched_caches_are_refused(features_path, tmp_path):
    cache = tmp_path / "matches.h5"
    with pytest.raises(ValueError, match="'a0.png' with itself"):
        match_and_verify(features_path, [("a0.png", "a0.png")], MatchConf(), cache)
    with pytest.raises(KeyError, match="nope.png"):
        match_and_verify(features_path, [("a0.png", "nope.png")], MatchConf(), cache)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        match_and_verify(tmp_path / "missing.h5", PAIRS, MatchConf(), cache)
    match_and_verify(features_path, PAIRS[:1], MatchConf(), cache)
    with pytest.raises(ValueError, match="matches.h5 was written with configuration"):
        match_and_verify(features_path, PAIRS[:1], MatchConf(ratio=0.9), cache)
    table = match_and_verify(features_path, PAIRS[:1], MatchConf(ratio=0.9), cache,
                             overwrite=True)
    assert table.inliers.iloc[0] >= 100
