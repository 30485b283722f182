"""Local features: SIFT on demo renders, pixel conventions, RootSIFT, the HDF5 cache."""

from __future__ import annotations

import json
import logging
import os
import threading

import cv2
import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

from src.geometric import features as lf
from src.geometric.h5cache import partial_path
from src.data_io import write_image_rgb

from tests import demo_views
from tests.demo_views import HEIGHT, WIDTH


def render_scene_views(seed: int, sideways_steps: list[float]) -> list[np.ndarray]:
    """Just the images of tests.demo_views.render_scene_views."""
    return [view[0] for view in demo_views.render_scene_views(seed, sideways_steps)]


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    """Two views of scene A, one of scene B, a blank image."""
    view_a0, view_a1 = render_scene_views(seed=0, sideways_steps=[0.0, 0.5])
    (view_b0,) = render_scene_views(seed=1, sideways_steps=[0.0])
    return {"a0.png": view_a0, "a1.png": view_a1, "b0.png": view_b0,
            "blank.png": np.full((HEIGHT, WIDTH, 3), 128, np.uint8)}


@pytest.fixture
def image_dir(tmp_path, images):
    folder = tmp_path / "demo_set"
    for name, image in images.items():
        write_image_rgb(folder / name, image)
    return folder


class CallCounter:
    """Wraps the SIFT extractor's __call__, counting calls; optionally fails on call n, or on
    the image equal to ``fail_on_image`` (images are extracted side by side in threads, so
    which image a call number falls on is not fixed)."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None,
                 fail_on_image: np.ndarray | None = None):
        self.calls = 0
        original = lf._SiftExtractor.__call__
        counter = self
        lock = threading.Lock()

        def counted(extractor, image):
            with lock:
                counter.calls += 1
                failing = counter.calls == fail_on_call
            if failing or (fail_on_image is not None and np.array_equal(image, fail_on_image)):
                raise RuntimeError("simulated crash")
            return original(extractor, image)

        monkeypatch.setattr(lf._SiftExtractor, "__call__", counted)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field, value", [("name", "orb"), ("max_keypoints", 0),
                                          ("max_keypoints", 10.5), ("max_image_side", 4),
                                          ("root_sift", 1), ("contrast_threshold", 0.0),
                                          ("model", "aliked-n16"), ("device", "tpu"),
                                          ("affine_tilt", 1.0), ("affine_tilt", -2.0),
                                          ("affine_tilt", True)])
def test_bad_configuration_is_refused(field, value):
    with pytest.raises(ValueError, match=f"FeatureConf.{field}"):
        lf.FeatureConf(**{field: value})


def test_cache_key_is_stable_and_depends_on_every_field():
    default = lf.FeatureConf()
    assert default.cache_key() == lf.FeatureConf().cache_key()
    assert default.cache_key().startswith("sift-4096-1600-")
    others = [lf.FeatureConf(max_keypoints=100), lf.FeatureConf(max_image_side=800),
              lf.FeatureConf(root_sift=False), lf.FeatureConf(upright=True),
              lf.FeatureConf(contrast_threshold=0.02), lf.FeatureConf(affine_tilt=3.0),
              lf.FeatureConf(affine_tilt=0)]
    keys = {conf.cache_key() for conf in [default, *others]}
    assert len(keys) == 1 + len(others)


# --------------------------------------------------------------------------- one image
def test_features_have_documented_shapes_and_lie_inside_the_image(images):
    features = lf.extract_features(images["a0.png"], lf.FeatureConf())
    n = len(features)
    assert 150 < n <= 4096  # several hundred on a 320 x 240 render
    assert features.keypoints.shape == (n, 2) and features.keypoints.dtype == np.float32
    assert features.descriptors.shape == (n, 128) and features.descriptors.dtype == np.float32
    assert features.scores.shape == (n,) and features.scores.dtype == np.float32
    assert features.image_size == (HEIGHT, WIDTH)
    x, y = features.keypoints.T
    assert x.min() >= -0.5 and x.max() <= WIDTH - 0.5
    assert y.min() >= -0.5 and y.max() <= HEIGHT - 0.5
    assert np.all(np.diff(features.scores) <= 0)  # strongest first


def test_max_keypoints_keeps_the_strongest(images):
    everything = lf.extract_features(images["a0.png"], lf.FeatureConf(affine_tilt=0))
    few = lf.extract_features(images["a0.png"], lf.FeatureConf(max_keypoints=50))
    assert len(few) == 50
    np.testing.assert_allclose(few.scores, everything.scores[:50], rtol=1e-6)


# --------------------------------------------------------------------------- affine views
def test_affine_views_add_to_an_images_own_keypoints_only_when_the_budget_is_unused(images):
    own = lf.extract_features(images["a0.png"], lf.FeatureConf(affine_tilt=0))
    assert len(own) < lf.AFFINE_FILL * 4096  # a 320 x 240 render leaves the budget unused
    both = lf.extract_features(images["a0.png"], lf.FeatureConf())
    assert len(both) > 1.3 * len(own)
    assert np.all(np.diff(both.scores) <= 0)  # strongest first, the two kinds interleaved
    # every keypoint of the image's own is there, with its descriptor (SIFT gives a point
    # one row per orientation, so rows are compared whole)
    def rows(features):
        return [np.r_[p, d].tobytes() for p, d in zip(features.keypoints, features.descriptors)]
    assert set(rows(own)) <= set(rows(both))
    # a budget the image fills (under AFFINE_FILL x budget is asked for) adds nothing
    budget = int(len(own) / lf.AFFINE_FILL) - 10
    capped = lf.extract_features(images["a0.png"], lf.FeatureConf(max_keypoints=budget))
    assert len(capped) == len(own)
    np.testing.assert_array_equal(capped.keypoints, own.keypoints)


def test_affine_views_stay_within_the_budget_and_out_of_caches_that_do_not_use_them():
    # noise stretched 2x along x: its squeezed copy is as rich as the image's own detections
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur((rng.random((200, 150)) * 255).astype(np.uint8), (0, 0), 1.5)
    image = cv2.resize(noise, (300, 200), interpolation=cv2.INTER_CUBIC)
    own = len(lf.extract_features(image, lf.FeatureConf(affine_tilt=0)))
    budget = int(own / lf.AFFINE_FILL) + 1  # the image fills under half: squeezed copies
    both = lf.extract_features(image, lf.FeatureConf(max_keypoints=budget))
    assert len(both) == budget
    upright = lf.extract_features(image, lf.FeatureConf(max_keypoints=budget, upright=True))
    assert len(upright) > len(lf.extract_features(
        image, lf.FeatureConf(max_keypoints=budget, upright=True, affine_tilt=0)))
    # off, the option leaves the cache's JSON as it was before it existed; learned
    # features ignore it either way
    assert "affine_tilt" not in json.loads(lf.FeatureConf(affine_tilt=0).to_json())
    assert json.loads(lf.FeatureConf().to_json())["affine_tilt"] == lf.AFFINE_TILT
    assert lf.FeatureConf(name="aliked", affine_tilt=0).to_json() == \
        lf.FeatureConf(name="aliked").to_json()
    # read back from a cache's JSON, an option left out is off (not today's default)
    for conf in (lf.FeatureConf(), lf.FeatureConf(affine_tilt=0),
                 lf.FeatureConf(min_image_side=512, affine_tilt=3.0, max_keypoints=100)):
        assert lf.FeatureConf.from_json(conf.to_json(), conf.device) == conf
    assert lf.FeatureConf.from_json('{"name": "sift"}').affine_tilt == 0


def test_a_squeezed_views_keypoint_maps_back_to_the_blob_it_saw():
    # One blob twice as wide as tall centred at (x0, y0): squeezed by 2 along x it is
    # round, SIFT finds its centre there, and that point must come back to (x0, y0).
    height, width, x0, y0 = 120, 200, 83.0, 57.0
    y, x = np.mgrid[:height, :width]
    blob = np.exp(-(((x - x0) / 16.0) ** 2 + ((y - y0) / 8.0) ** 2) / 2)
    image = np.round(40 + 200 * blob).astype(np.uint8)
    own = {point.tobytes() for point in
           lf.extract_features(image, lf.FeatureConf(affine_tilt=0)).keypoints}
    both = lf.extract_features(image, lf.FeatureConf(affine_tilt=2.0)).keypoints
    squeezed = np.array([point for point in both if point.tobytes() not in own])
    # within 0.3 px: forgetting the pixel-centre offsets of the squeeze would miss by 0.5
    assert np.hypot(squeezed[:, 0] - x0, squeezed[:, 1] - y0).min() < 0.3


def test_affine_views_match_a_surface_seen_from_the_side(images):
    # a0 against a0 foreshortened to 45 % of its width (a wall seen obliquely), the truth a
    # known homography: the squeezed copy of a0 looks like the side view, so more correct
    # matches survive the ratio test than between the image's own keypoints alone.
    from src.geometric.matching import MatchConf, match_descriptors
    frontal = images["a0.png"]
    corners = np.float32([[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT]])
    side = np.float32([[0.3 * WIDTH, 0.05 * HEIGHT], [0.75 * WIDTH, 0.0],
                       [0.75 * WIDTH, HEIGHT], [0.3 * WIDTH, 0.95 * HEIGHT]])
    H = cv2.getPerspectiveTransform(corners, side)
    oblique = cv2.warpPerspective(frontal, H, (WIDTH, HEIGHT), flags=cv2.INTER_AREA)

    def correct_matches(conf):
        fa, fb = (lf.extract_features(image, conf) for image in (frontal, oblique))
        m = match_descriptors(fa.descriptors, fb.descriptors, MatchConf())
        projected = cv2.perspectiveTransform(fa.keypoints[m[:, 0]][None].astype(np.float64),
                                             H)[0]
        return int(np.sum(np.hypot(*(projected - fb.keypoints[m[:, 1]]).T) < 2.0))

    without, with_views = correct_matches(lf.FeatureConf(affine_tilt=0)), \
        correct_matches(lf.FeatureConf())
    assert with_views >= 1.5 * without + 10, (without, with_views)


def test_root_sift_is_the_square_root_of_l1_normalised_sift(images):
    plain = lf.extract_features(images["a0.png"], lf.FeatureConf(root_sift=False))
    root = lf.extract_features(images["a0.png"], lf.FeatureConf(root_sift=True))
    np.testing.assert_array_equal(plain.keypoints, root.keypoints)
    assert np.all(root.descriptors >= 0)
    np.testing.assert_allclose(np.linalg.norm(root.descriptors, axis=1), 1.0, atol=1e-5)
    expected = np.sqrt(plain.descriptors / plain.descriptors.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(root.descriptors, expected, atol=1e-5)


def test_downscaled_detection_maps_keypoints_back_to_original_pixels(images):
    small = images["a0.png"]
    # every pixel as a 2 x 2 block: area-downscaling by 2 gives back exactly `small`
    big = cv2.resize(small, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_NEAREST)
    conf = lf.FeatureConf(max_image_side=WIDTH)
    on_small = lf.extract_features(small, conf)
    on_big = lf.extract_features(big, conf)
    assert on_big.image_size == (2 * HEIGHT, 2 * WIDTH)
    assert len(on_big) == len(on_small)
    # pixel-centre convention: x_big = 2 (x_small + 0.5) - 0.5
    np.testing.assert_allclose(on_big.keypoints, 2 * (on_small.keypoints + 0.5) - 0.5, atol=1e-3)
    np.testing.assert_allclose(on_big.descriptors, on_small.descriptors, atol=1e-6)


def test_keypoints_follow_the_pixel_centre_convention(images):
    """Detected at full size on a 2x upscale (cv2.resize keeps pixel centres), keypoints
    land where the same features are in the small image after x -> (x + 0.5) / 2 - 0.5;
    the corner convention (x / 2) would be off by a quarter pixel."""
    small = images["a0.png"]
    big = cv2.resize(small, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_CUBIC)
    on_small = lf.extract_features(small, lf.FeatureConf())
    on_big = lf.extract_features(big, lf.FeatureConf())
    mapped = (on_big.keypoints + 0.5) / 2 - 0.5
    distance, nearest = cKDTree(on_small.keypoints).query(mapped)
    close = distance < 1.0
    assert close.sum() > 100
    offset = np.median(mapped[close] - on_small.keypoints[nearest[close]], axis=0)
    assert np.all(np.abs(offset) < 0.08), offset


def test_upright_gives_one_keypoint_per_location(images):
    conf = lf.FeatureConf(upright=True, max_keypoints=300)
    features = lf.extract_features(images["a0.png"], conf)
    assert 100 < len(features) <= 300
    assert len(np.unique(features.keypoints, axis=0)) == len(features)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("image", [np.zeros((HEIGHT, WIDTH, 3), np.uint8),
                                   np.full((HEIGHT, WIDTH, 3), 200, np.uint8),
                                   np.zeros((5, 7, 3), np.uint8),
                                   np.full((1, 1, 3), 255, np.uint8)],
                         ids=["black", "grey", "tiny", "one-pixel"])
def test_blank_and_tiny_images_give_no_keypoints(image):
    features = lf.extract_features(image, lf.FeatureConf())
    assert len(features) == 0
    assert features.keypoints.shape == (0, 2) and features.descriptors.shape == (0, 128)
    assert features.scores.shape == (0,)
    assert features.image_size == image.shape[:2]


def test_grayscale_input_matches_rgb_and_bad_input_is_refused(images):
    rgb = images["b0.png"]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(lf.extract_features(gray).keypoints,
                                  lf.extract_features(rgb).keypoints)
    with pytest.raises(ValueError, match="uint8"):
        lf.extract_features(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        lf.extract_features(np.zeros((10, 10, 4), np.uint8))


# --------------------------------------------------------------------------- the cache
def test_extract_dataset_stores_what_extract_features_returns(image_dir, images, tmp_path):
    conf = lf.FeatureConf()
    cache = tmp_path / f"features-{conf.cache_key()}.h5"
    assert lf.extract_dataset(image_dir, list(images), conf, cache) == cache
    loaded = lf.load_all_features(cache)
    assert set(loaded) == set(images)
    for name, image in images.items():
        expected = lf.extract_features(image, conf)
        np.testing.assert_array_equal(loaded[name].keypoints, expected.keypoints)
        np.testing.assert_array_equal(loaded[name].descriptors, expected.descriptors)
        np.testing.assert_array_equal(loaded[name].scores, expected.scores)
        assert loaded[name].image_size == (HEIGHT, WIDTH)
    assert len(loaded["blank.png"]) == 0
    one = lf.load_features(cache, "a1.png")
    np.testing.assert_array_equal(one.keypoints, loaded["a1.png"].keypoints)
    with h5py.File(cache) as h5:
        assert set(h5) == set(images)
        assert tuple(h5["a0.png"].attrs["image_size"]) == (HEIGHT, WIDTH)
        assert h5.attrs["config"] == conf.to_json()
    with pytest.raises(KeyError, match="nope.png"):
        lf.load_features(cache, "nope.png")
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_the_reader_serves_complete_entries_and_keeps_the_most_recent(image_dir, images,
                                                                      tmp_path):
    conf = lf.FeatureConf(max_keypoints=100)
    cache = lf.extract_dataset(image_dir, ["a0.png", "a1.png", "b0.png"], conf,
                               tmp_path / "features.h5")
    loaded = lf.load_all_features(cache)
    with lf.open_features(cache, memory=2) as features:
        assert sorted(features.names()) == ["a0.png", "a1.png", "b0.png"]
        assert "a0.png" in features and "blank.png" not in features
        first = {name: features[name] for name in ["a0.png", "a1.png", "a0.png", "b0.png"]}
        for name, read in first.items():
            np.testing.assert_array_equal(read.keypoints, loaded[name].keypoints)
        assert features["a0.png"] is first["a0.png"]  # kept in memory
        assert features["a1.png"] is not first["a1.png"]  # the least recent: read again
        with pytest.raises(KeyError, match="blank.png"):
            features["blank.png"]
    assert lf.cached_images(cache) == {"a0.png", "a1.png", "b0.png"}


def test_second_call_skips_and_overwrite_recomputes(image_dir, images, tmp_path,
                                                    monkeypatch):
    conf = lf.FeatureConf()
    cache = tmp_path / "features.h5"
    counter = CallCounter(monkeypatch)
    lf.extract_dataset(image_dir, list(images), conf, cache)
    assert counter.calls == len(images)
    mtime = os.stat(cache).st_mtime_ns
    lf.extract_dataset(image_dir, list(images), conf, cache)
    assert counter.calls == len(images) and os.stat(cache).st_mtime_ns == mtime
    lf.extract_dataset(image_dir, list(images), conf, cache, overwrite=True)
    assert counter.calls == 2 * len(images)
    assert set(lf.load_all_features(cache)) == set(images)


def test_new_images_are_added_without_redoing_old_ones(image_dir, images, tmp_path,
                                                       monkeypatch):
    conf = lf.FeatureConf(max_keypoints=100)
    cache = tmp_path / "features.h5"
    counter = CallCounter(monkeypatch)
    lf.extract_dataset(image_dir, ["a0.png", "a1.png"], conf, cache)
    lf.extract_dataset(image_dir, list(images), conf, cache)
    assert counter.calls == len(images)
    assert set(lf.load_all_features(cache)) == set(images)


def test_corrupt_and_missing_images_are_logged_and_stored_empty(image_dir, tmp_path, caplog):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a JPEG")
    cache = tmp_path / "features.h5"
    with caplog.at_level(logging.WARNING, logger="src.geometric.features"):
        lf.extract_dataset(image_dir, ["a0.png", "broken.jpg", "gone.png"], lf.FeatureConf(),
                           cache)
    assert "broken.jpg" in caplog.text and "gone.png" in caplog.text
    loaded = lf.load_all_features(cache)
    for name in ("broken.jpg", "gone.png"):
        assert len(loaded[name]) == 0 and loaded[name].descriptors.shape == (0, 128)
        assert loaded[name].image_size == (0, 0)
    assert len(loaded["a0.png"]) > 100
    with h5py.File(cache) as h5:
        assert "cannot decode" in h5["broken.jpg"].attrs["error"]
        assert "error" not in h5["a0.png"].attrs


def test_a_crash_leaves_no_half_written_cache_and_the_rerun_resumes(image_dir, images,
                                                                     tmp_path, monkeypatch):
    conf = lf.FeatureConf(max_keypoints=200)
    cache = tmp_path / "features.h5"
    names = list(images)
    with monkeypatch.context() as patch:
        CallCounter(patch, fail_on_image=images[names[2]])
        with pytest.raises(RuntimeError, match="simulated crash"):
            lf.extract_dataset(image_dir, names, conf, cache)
    assert not cache.exists()  # nothing published...
    assert partial_path(cache).exists()  # ...but the work so far is kept
    counter = CallCounter(monkeypatch)
    lf.extract_dataset(image_dir, names, conf, cache)
    assert counter.calls == len(names) - 2  # the two images before the crash are kept
    assert set(lf.load_all_features(cache)) == set(names)
    assert not partial_path(cache).exists()


def test_a_crash_keeps_the_previous_cache_intact(image_dir, tmp_path, monkeypatch):
    conf = lf.FeatureConf(max_keypoints=200)
    cache = tmp_path / "features.h5"
    lf.extract_dataset(image_dir, ["a0.png"], conf, cache)
    before = cache.read_bytes()
    with monkeypatch.context() as patch:
        CallCounter(patch, fail_on_call=1)
        with pytest.raises(RuntimeError):
            lf.extract_dataset(image_dir, ["a0.png", "a1.png"], conf, cache)
    assert cache.read_bytes() == before
    assert set(lf.load_all_features(cache)) == {"a0.png"}


def test_an_unreadable_leftover_is_discarded(image_dir, tmp_path, caplog):
    cache = tmp_path / "features.h5"
    partial_path(cache).write_bytes(b"killed mid-write")
    with caplog.at_level(logging.WARNING, logger="src.geometric.h5cache"):
        lf.extract_dataset(image_dir, ["a0.png"], lf.FeatureConf(), cache)
    assert "starting over" in caplog.text
    assert set(lf.load_all_features(cache)) == {"a0.png"}


def test_a_cache_of_another_configuration_is_refused(image_dir, tmp_path):
    cache = tmp_path / "features.h5"
    lf.extract_dataset(image_dir, ["a0.png"], lf.FeatureConf(max_keypoints=100), cache)
    with pytest.raises(ValueError, match="features.h5 was written with configuration"):
        lf.extract_dataset(image_dir, ["a0.png"], lf.FeatureConf(max_keypoints=200), cache)
    lf.extract_dataset(image_dir, ["a0.png"], lf.FeatureConf(max_keypoints=200), cache,
                       overwrite=True)
    assert len(lf.load_features(cache, "a0.png")) == 200


def test_names_with_slashes_round_trip_and_bad_inputs_are_named(image_dir, images, tmp_path):
    write_image_rgb(image_dir / "sub" / "50%.png", images["b0.png"])
    cache = tmp_path / "features.h5"
    lf.extract_dataset(image_dir, ["sub/50%.png", "a0.png"], lf.FeatureConf(), cache)
    assert set(lf.load_all_features(cache)) == {"sub/50%.png", "a0.png"}
    assert len(lf.load_features(cache, "sub/50%.png")) > 100
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        lf.extract_dataset(tmp_path / "no_such_folder", ["a0.png"], lf.FeatureConf(), cache)
    with pytest.raises(ValueError, match="repeated"):
        lf.extract_dataset(image_dir, ["a0.png", "a0.png"], lf.FeatureConf(), cache)


def test_upscaled_detection_maps_keypoints_back_to_original_pixels(images):
    """min_image_side detects on a cubic upscale and maps back: the same keypoints as
    detecting on that upscale by hand and dividing with the pixel-centre convention."""
    small = images["a0.png"]
    # the extractor turns the image grey before resizing it: so does this reference
    big = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (2 * WIDTH, 2 * HEIGHT),
                     interpolation=cv2.INTER_CUBIC)
    upscaled = lf.extract_features(small, lf.FeatureConf(min_image_side=2 * max(WIDTH, HEIGHT)))
    by_hand = lf.extract_features(big, lf.FeatureConf())
    assert upscaled.image_size == (HEIGHT, WIDTH)
    assert len(upscaled) == len(by_hand) > len(lf.extract_features(small, lf.FeatureConf()))
    np.testing.assert_allclose(upscaled.keypoints, (by_hand.keypoints + 0.5) / 2 - 0.5,
                               atol=1e-3)
    # the option stays out of the cache name when unset, so older caches stay valid
    assert "min_image_side" not in lf.FeatureConf().to_json()
    with pytest.raises(ValueError, match="min_image_side"):
        lf.FeatureConf(max_image_side=640, min_image_side=1024)
