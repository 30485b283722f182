"""Quarter turns of images, and LightGlue's rotation retry (MatchConf.rotation_retry)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import src.geometric.features as lf
from src.geometry import fundamental_from_poses
from src.geometric.matching import (LightGlueMatcher, MatchConf, _settle_turns, load_matched_features,
                                    load_pair, load_turns, match_and_verify)

SMALL = dict(max_keypoints=512)


# --------------------------------------------------------------------------- quarter turns
@pytest.mark.parametrize("degrees", lf.QUARTER_TURNS)
@pytest.mark.parametrize("image_hw", [(5, 7), (6, 6)])
def test_turned_points_land_on_the_same_pixel_of_the_turned_image(degrees, image_hw):
    height, width = image_hw
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs, ys], axis=2)  # each pixel holds its own column and row
    turned = lf.turn_image(image, degrees)
    assert turned.shape[:2] == ((width, height) if degrees in (90, 270) else image_hw)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    moved = lf.turn_points(points, degrees, image_hw)
    np.testing.assert_array_equal(moved, np.round(moved))
    column, row = moved.astype(int).T
    np.testing.assert_array_equal(turned[row, column], points)
    # the image's outer edge (pixel centres +-0.5) stays the turned image's outer edge
    corners = np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]])
    turned_corners = lf.turn_points(corners, degrees, image_hw)
    np.testing.assert_allclose(np.sort(turned_corners[:, 0]), [-0.5, turned.shape[1] - 0.5])
    np.testing.assert_allclose(np.sort(turned_corners[:, 1]), [-0.5, turned.shape[0] - 0.5])


@pytest.mark.parametrize("degrees", lf.QUARTER_TURNS)
def test_turning_points_there_and_back_is_the_identity(degrees):
    rng = np.random.default_rng(degrees)
    image_hw = (240, 320)
    points = rng.uniform(-0.5, 319.5, (100, 2)) * [1.0, 0.75]
    back = lf.unturn_points(lf.turn_points(points, degrees, image_hw), degrees, image_hw)
    np.testing.assert_allclose(back, points, atol=1e-9)
    features = lf.Features(points.astype(np.float32), np.zeros((100, 4), np.float32),
                           np.zeros(100, np.float32), image_hw)
    turned = features.turned(degrees)
    assert turned.image_size == ((320, 240) if degrees in (90, 270) else image_hw)
    np.testing.assert_allclose(lf.unturn_points(turned.keypoints, degrees, image_hw),
                               features.keypoints, atol=1e-4)
    with pytest.raises(ValueError, match="one of"):
        lf.turn_points(points, 45, image_hw)


# --------------------------------------------------------------------------- choosing turns
def test_each_image_gets_one_turn_that_keeps_most_images_upright():
    images = ["a", "b", "c", "d", "lone"]
    edges = [("a", "b", 0, 200), ("a", "c", 0, 150), ("c", "d", 90, 40)]
    assert _settle_turns(images, edges) == {"a": 0, "b": 0, "c": 0, "d": 90, "lone": 0}
    # a alone differs from b and c: a is the one turned (by -90 = 270)
    edges = [("a", "b", 90, 100), ("a", "c", 90, 100), ("b", "c", 0, 300)]
    assert _settle_turns(["a", "b", "c"], edges) == {"a": 270, "b": 0, "c": 0}
    # a weak edge that contradicts two strong ones loses
    edges = [("a", "b", 0, 300), ("b", "c", 0, 300), ("a", "c", 180, 12)]
    assert _settle_turns(["a", "b", "c"], edges) == {"a": 0, "b": 0, "c": 0}


def test_a_tie_turns_the_image_already_detected_turned():
    edges = [("a", "b", 90, 30)]
    assert _settle_turns(["a", "b"], edges, detected={"b"}) == {"a": 0, "b": 90}
    assert _settle_turns(["a", "b"], edges, detected={"a"}) == {"a": 270, "b": 0}


def test_failing_pairs_and_the_pairs_of_weak_images_are_tried_turned():
    from src.geometric.matching import _TurnRetry
    from src.geometric.options import ROTATION_WEAK_INLIERS

    retry = _TurnRetry.__new__(_TurnRetry)  # only its upright features are read here
    retry.upright = {name: [0] * (0 if name == "e" else 100) for name in "abcde"}
    upright = {("a", "b"): 300, ("a", "c"): ROTATION_WEAK_INLIERS - 1, ("b", "c"): 0,
               ("c", "d"): 15, ("d", "a"): 12, ("a", "e"): 0}
    trials, failing, weak = retry._trials(list(upright), upright, passing=10)
    assert weak == ["c", "d", "e"]  # their best upright pairs are under the bar
    assert failing == [("b", "c")]  # (a, e): e has no keypoints to match
    # the weak image is the one turned; the second when both or neither are weak
    assert trials == [(("a", "c"), 1), (("b", "c"), 1), (("c", "d"), 1), (("d", "a"), 0)]


def test_rotation_retry_is_lightglue_only_and_keeps_old_cache_names():
    sift, lightglue = MatchConf(), MatchConf(matcher="lightglue")
    assert lightglue.turns_images and not sift.turns_images
    # nn-ratio ignores the option: the same cache either way, as before the option existed
    assert MatchConf(rotation_retry=False).cache_key() == sift.cache_key()
    assert "rotation_retry" not in sift.to_json()
    without = MatchConf(matcher="lightglue", rotation_retry=False)
    assert "rotation_retry" not in without.to_json()
    assert without.cache_key() != lightglue.cache_key()
    with pytest.raises(ValueError, match="rotation_retry must be True or False"):
        MatchConf(rotation_retry=1)


# --------------------------------------------------------------------------- a turned pair
@pytest.fixture(scope="module")
def views():
    """Three renders of one demo scene, 0.6 units apart (closer ones leave the incremental
    mapper too little parallax to start), with their exact poses; the tests that use them
    run ALIKED and LightGlue."""
    pytest.importorskip("torch")
    from tests.demo_views import render_scene_views
    return render_scene_views(7, [0.0, 0.6, 1.2])


def write_views(folder, views, turned: int):
    """v0.png, v1.png, ... with view ``turned`` turned a quarter clockwise, as a camera held
    sideways takes it (np.rot90 k=-1: out[i, j] = view[H - 1 - j, i])."""
    folder.mkdir()
    names = []
    for i, (image, *_) in enumerate(views):
        name = f"v{i}-sideways.png" if i == turned else f"v{i}.png"
        if i == turned:
            image = np.rot90(image, -1)
        cv2.imwrite(str(folder / name), cv2.cvtColor(np.ascontiguousarray(image),
                                                      cv2.COLOR_RGB2BGR))
        names.append(name)
    return names


def epipolar_distances(F, points_a, points_b) -> np.ndarray:
    """Distance (pixels) of each point of b from the epipolar line of its match in a."""
    lines = np.c_[points_a, np.ones(len(points_a))] @ F.T
    return np.abs(np.sum(lines * np.c_[points_b, np.ones(len(points_b))], axis=1)) / \
        np.hypot(lines[:, 0], lines[:, 1])


@pytest.mark.slow
def test_a_sideways_view_is_matched_after_turning_it_back(views, tmp_path, caplog,
                                                           monkeypatch):
    names = write_views(tmp_path / "images", views[:2], turned=1)  # v0.png, v1-sideways.png
    conf = lf.FeatureConf(name="aliked", **SMALL)
    features_path = lf.extract_dataset(tmp_path / "images", names, conf, tmp_path / "f.h5")
    pair = [tuple(names)]
    plain = match_and_verify(features_path, pair, MatchConf(matcher="lightglue",
                                                            rotation_retry=False),
                             tmp_path / "plain.h5")
    assert plain["inliers"].tolist() == [0]  # ALIKED + LightGlue are not rotation invariant

    with caplog.at_level(logging.INFO):
        table = match_and_verify(features_path, pair, MatchConf(matcher="lightglue"),
                                 tmp_path / "m.h5", image_dir=tmp_path / "images")
    assert table["inliers"].tolist()[0] > 100
    assert load_turns(tmp_path / "m.h5") == {"v1-sideways.png": 90}  # turned back upright
    assert "rotation retry: 1 of 1 failing pair(s) recovered" in caplog.text
    assert "v1-sideways.png 90" in caplog.text

    # The stored indices refer to the keypoints detected turned, in the stored image's pixels.
    features = load_matched_features(features_path, tmp_path / "m.h5")
    sideways = features["v1-sideways.png"]
    assert sideways.image_size == (320, 240)
    x, y = sideways.keypoints.T
    assert x.min() >= -0.5 and x.max() <= 239.5 and y.min() >= -0.5 and y.max() <= 319.5
    _, inliers, _ = load_pair(tmp_path / "m.h5", *names)
    points_a = features["v0.png"].keypoints[inliers[:, 0]].astype(np.float64)
    points_sideways = sideways.keypoints[inliers[:, 1]].astype(np.float64)
    # np.rot90's definition, independent of the code under test: view pixel (x, y) =
    # sideways pixel (H - 1 - y, x), so sideways (x', y') is view (y', H - 1 - x')
    height = views[1][0].shape[0]
    points_b = np.c_[points_sideways[:, 1], height - 1 - points_sideways[:, 0]]
    (_, K, R_a, t_a), (_, _, R_b, t_b) = views[0], views[1]
    distances = epipolar_distances(fundamental_from_poses(K, R_a, t_a, K, R_b, t_b),
                                   points_a, points_b)
    assert np.median(distances) < 1.0 and np.mean(distances < 3.0) > 0.95

    # The upright pair matches the same keypoints of v0 to the same places of the view.
    upright = lf.extract_features(views[1][0], conf)
    matches = LightGlueMatcher("aliked", MatchConf(matcher="lightglue"))(features["v0.png"],
                                                                         upright)
    predicted = dict(zip(matches[:, 0], upright.keypoints[matches[:, 1]]))
    common = [k for k, index in enumerate(inliers[:, 0]) if index in predicted]
    assert len(common) > 50
    offsets = [np.linalg.norm(points_b[k] - predicted[inliers[k, 0]]) for k in common]
    assert np.median(offsets) < 1.0

    # A second call is served from the cache, turns included.
    calls = []
    original = LightGlueMatcher.__call__
    monkeypatch.setattr(LightGlueMatcher, "__call__",
                        lambda self, a, b: calls.append(1) or original(self, a, b))
    again = match_and_verify(features_path, pair, MatchConf(matcher="lightglue"),
                             tmp_path / "m.h5", image_dir=tmp_path / "images")
    assert calls == [] and again.equals(table)
    with pytest.raises(ValueError, match="pass image_dir"):
        match_and_verify(features_path, pair, MatchConf(matcher="lightglue"), tmp_path / "x.h5")


@pytest.mark.slow
def test_a_scene_with_a_sideways_view_is_reconstructed_whole(views, tmp_path, caplog):
    from src.geometric.pipeline import GeometricConf, reconstruct_dataset

    names = write_views(tmp_path / "images", views, turned=1)
    conf = GeometricConf(features=lf.FeatureConf(name="aliked", **SMALL),
                         matching=MatchConf(matcher="lightglue"))
    with caplog.at_level(logging.INFO):
        predictions, _, sfm_rows = reconstruct_dataset("d", tmp_path / "images", names, conf,
                                                       tmp_path / "cache")
    assert "v1-sideways.png 90" in caplog.text
    assert len({p.scene for p in predictions}) == 1 and predictions[0].scene != "outliers"
    assert all(np.isfinite(p.R_cw).all() for p in predictions)
    assert sfm_rows[0]["registered"] == 3
    # The sideways camera is the view's camera turned about its optical axis: its x axis is
    # the view's -y, its y axis the view's x (from np.rot90 k=-1 above).
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    R_true = [views[0][2], turn @ views[1][2], views[2][2]]
    for i, j in ((0, 1), (1, 2), (0, 2)):
        relative = predictions[j].R_cw @ predictions[i].R_cw.T
        error = Rotation.from_matrix(relative.T @ (R_true[j] @ R_true[i].T)).magnitude()
        assert np.degrees(error) < 3.0, (i, j)


def test_turns_settled_for_other_pairs_send_these_pairs_back_to_the_retry(tmp_path):
    """A cache whose turns a later run settled for other pairs (x turned back upright)
    still holds (x, z) matched with x turned: its indices point into the turned
    detections, so the pairs are not served as they are."""
    import json

    import h5py

    from src.geometric.matching import _PairWriter, _turns_settled

    path = tmp_path / "matches.h5"
    no_matches = np.zeros((0, 2), np.int32)
    with h5py.File(path, "w") as h5:
        writer = _PairWriter(h5)
        writer.add("x", "z", no_matches, no_matches, None, turn_a=90)
        writer.add("y", "z", no_matches, no_matches, None)
        writer.flush()
        h5.attrs["turns"] = json.dumps({})
    assert _turns_settled(path, [("y", "z")])
    assert not _turns_settled(path, [("x", "z"), ("y", "z")])
    with h5py.File(path, "a") as h5:
        h5.attrs["turns"] = json.dumps({"x": 90})
    assert _turns_settled(path, [("x", "z"), ("y", "z")])
    with h5py.File(path, "a") as h5:
        del h5.attrs["turns"]
    assert not _turns_settled(path, [("y", "z")])  # the retry never finished
