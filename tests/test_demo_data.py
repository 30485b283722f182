"""The synthetic IMC 2025 style dataset: layout, determinism, caching and correct poses."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from src import demo_data as demo
from src.geometry import camera_centers, is_rotation, look_at_rotation, rotation_angle_deg
from src.data_io import LABEL_COLUMNS, parse_numbers, read_image_rgb
from src.submission import (OUTLIER_SCENE, SUBMISSION_COLUMNS, default_image_id,
    read_submission, validate_submission)

# Small enough to generate in a second or two, big enough to have every kind of row.
TINY = demo.DemoSpec(image_width=96, image_height=72, train_datasets=2,
                     scenes_per_train_dataset=2, train_views_per_scene=4, test_datasets=2,
                     test_seen_scenes=1, test_unseen_scenes=1, test_views_per_scene=3,
                     outliers_per_dataset=2, seed=3)
# Smaller still, for the tests that generate several times.
MINI = demo.DemoSpec(image_width=64, image_height=48, train_datasets=1,
                     scenes_per_train_dataset=1, train_views_per_scene=2, test_datasets=1,
                     test_seen_scenes=1, test_unseen_scenes=0, test_views_per_scene=2,
                     outliers_per_dataset=1, seed=5)
CSV_COLUMNS = {
    "train_labels.csv": LABEL_COLUMNS,
    "test_labels.csv": LABEL_COLUMNS,
    "train_thresholds.csv": ["dataset", "scene", "thresholds"],
    "test_thresholds.csv": ["dataset", "scene", "thresholds"],
    "sample_submission.csv": SUBMISSION_COLUMNS,
    "calibration.csv": ["dataset", "scene", "image", "camera_intrinsics", "width", "height"],
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return demo.generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", TINY)


def read_csvs(root):
    return {name: read_submission(root / name) for name in CSV_COLUMNS}


def all_files(root):
    """Every file under root by its relative path ("train/x/y.png")."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- layout
def test_layout_files_and_columns(tiny_root):
    for name, columns in CSV_COLUMNS.items():
        assert list(read_submission(tiny_root / name).columns) == columns, name
    assert demo.read_demo_spec(tiny_root) == TINY
    assert json.loads((tiny_root / "demo_spec.json").read_text())["seed"] == TINY.seed
    assert not (tiny_root / demo.INCOMPLETE_MARKER).exists()
    assert {p.name for p in (tiny_root / "train").iterdir()} == {"demo_train_a", "demo_train_b"}
    assert {p.name for p in (tiny_root / "test").iterdir()} == {"demo_test_a", "demo_test_b"}


def test_every_image_listed_once_and_decodes(tiny_root):
    csvs = read_csvs(tiny_root)
    listed = []
    for split in ("train", "test"):
        labels = csvs[f"{split}_labels.csv"]
        for rec in labels.itertuples(index=False):
            image = read_image_rgb(tiny_root / split / rec.dataset / rec.image)
            assert image.shape == (TINY.image_height, TINY.image_width, 3)
            listed.append(f"{split}/{rec.dataset}/{rec.image}")
    assert len(listed) == len(set(listed))
    on_disk = {name for name in all_files(tiny_root) if name.endswith(".png")}
    assert on_disk == set(listed)
    # calibration lists the same images, with a pinhole K of the right size
    calibration = csvs["calibration.csv"]
    assert len(calibration) == len(listed)
    for rec in calibration.itertuples(index=False):
        K = parse_numbers(rec.camera_intrinsics, 9).reshape(3, 3)
        assert (int(rec.width), int(rec.height)) == (TINY.image_width, TINY.image_height)
        assert K[0, 0] == K[1, 1] and 0.9 * TINY.image_width <= K[0, 0] <= 1.2 * TINY.image_width
        np.testing.assert_allclose(K[:, 2], [TINY.image_width / 2, TINY.image_height / 2, 1])


def test_image_counts_and_opaque_names(tiny_root):
    for split, scenes in (("train", TINY.scenes_per_train_dataset),
                          ("test", TINY.test_seen_scenes + TINY.test_unseen_scenes)):
        views = TINY.train_views_per_scene if split == "train" else TINY.test_views_per_scene
        labels = read_submission(tiny_root / f"{split}_labels.csv")
        for dataset, rows in labels.groupby("dataset"):
            assert len(rows) == scenes * views + TINY.outliers_per_dataset
            assert rows["scene"].nunique() == scenes + (TINY.outliers_per_dataset > 0)
            # names are the dataset and a running number, nothing about the scene
            assert sorted(rows["image"]) == [f"{dataset}_{i:04d}.png" for i in range(len(rows))]


def test_poses_outliers_and_thresholds(tiny_root):
    csvs = read_csvs(tiny_root)
    for split in ("train", "test"):
        labels = csvs[f"{split}_labels.csv"]
        for rec in labels.itertuples(index=False):
            R = parse_numbers(rec.rotation_matrix, 9).reshape(3, 3)
            t = parse_numbers(rec.translation_vector, 3)
            if rec.scene == OUTLIER_SCENE:
                assert np.all(np.isnan(R)) and np.all(np.isnan(t))
            else:
                assert is_rotation(R, atol=1e-6) and np.all(np.isfinite(t))
        assert (labels["scene"] == OUTLIER_SCENE).sum() == 2 * TINY.outliers_per_dataset

        thresholds = csvs[f"{split}_thresholds.csv"]
        scenes = labels.loc[labels["scene"] != OUTLIER_SCENE, ["dataset", "scene"]]
        assert sorted(map(tuple, thresholds[["dataset", "scene"]].to_numpy())) == \
            sorted(set(map(tuple, scenes.to_numpy())))
        for text in thresholds["thresholds"]:
            values = parse_numbers(text, 6)
            assert np.all(values > 0) and np.all(np.diff(values) > 0)


def test_thresholds_scale_with_the_camera_spread(tiny_root):
    csvs = read_csvs(tiny_root)
    labels, thresholds = csvs["train_labels.csv"], csvs["train_thresholds.csv"]
    for rec in thresholds.itertuples(index=False):
        rows = labels[(labels["dataset"] == rec.dataset) & (labels["scene"] == rec.scene)]
        R = np.stack([parse_numbers(r, 9).reshape(3, 3) for r in rows["rotation_matrix"]])
        t = np.stack([parse_numbers(v, 3) for v in rows["translation_vector"]])
        centers = camera_centers(R, t)
        spread = np.median(np.linalg.norm(centers - centers.mean(axis=0), axis=1))
        ratio = parse_numbers(rec.thresholds, 6) / (demo.THRESHOLD_FRACTIONS * spread)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)  # one factor per scene
        assert 0.6 <= ratio[0] <= 1.6


def test_test_datasets_mix_seen_and_unseen_scenes(tiny_root):
    csvs = read_csvs(tiny_root)
    train, test = csvs["train_labels.csv"], csvs["test_labels.csv"]
    train_scenes = set(train["scene"]) - {OUTLIER_SCENE}
    for dataset, rows in test.groupby("dataset"):
        scenes = set(rows["scene"]) - {OUTLIER_SCENE}
        assert len(scenes & train_scenes) == TINY.test_seen_scenes, dataset
        assert len(scenes - train_scenes) == TINY.test_unseen_scenes, dataset
        for scene in scenes & train_scenes:
            # same world frame: the new cameras stand where the training cameras stood
            def centers(frame):
                rows_ = frame[frame["scene"] == scene]
                R = np.stack([parse_numbers(r, 9).reshape(3, 3) for r in rows_["rotation_matrix"]])
                t = np.stack([parse_numbers(v, 3) for v in rows_["translation_vector"]])
                return camera_centers(R, t)
            old, new = centers(train), centers(rows)
            radius = np.max(np.linalg.norm(old - old.mean(axis=0), axis=1))
            assert np.linalg.norm(new.mean(axis=0) - old.mean(axis=0)) < 2 * radius + 1.0
            # ... yet they are new views
            assert np.min(np.linalg.norm(new[:, None] - old[None], axis=2)) > 1e-6


def test_sample_submission_lists_every_test_image(tiny_root):
    csvs = read_csvs(tiny_root)
    sample, test = csvs["sample_submission.csv"], csvs["test_labels.csv"]
    validate_submission(sample, test[["dataset", "image"]])
    assert len(sample) == len(test)
    assert list(sample["image_id"]) == [default_image_id(d, i)
                                        for d, i in zip(sample["dataset"], sample["image"])]
    assert set(sample["scene"]) == {OUTLIER_SCENE}
    # listed by name within each dataset, so the order gives no hint of the scenes
    for _, rows in sample.groupby("dataset", sort=False):
        assert list(rows["image"]) == sorted(rows["image"])


def test_sample_cameras_see_the_structure():
    rng = np.random.default_rng(11)
    scene = demo.make_scene(rng)
    width, height = 128, 96
    K, R_cw, t_cw = demo.sample_cameras(rng, scene, 5, width, height)
    assert K.shape == (5, 3, 3) and R_cw.shape == (5, 3, 3) and t_cw.shape == (5, 3)
    ground = np.array([p.is_ground for p in scene.planes])
    for i in range(5):
        assert is_rotation(R_cw[i], atol=1e-9)
        index = demo.surface_index_map(scene, K[i], R_cw[i], t_cw[i], width, height)
        assert (index >= 0).mean() > 0.45  # checked on a coarser grid when sampled
        assert ((index >= 0) & ~ground[np.maximum(index, 0)]).mean() > 0.05


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = demo.generate_demo_dataset(tmp_path / "a", MINI)
    second = demo.generate_demo_dataset(tmp_path / "b", MINI)
    other = demo.generate_demo_dataset(tmp_path / "c", dataclasses.replace(MINI, seed=6))
    files_a, files_b, files_c = all_files(first), all_files(second), all_files(other)
    assert files_a.keys() == files_b.keys()
    for name, path in files_a.items():
        assert path.read_bytes() == files_b[name].read_bytes(), name
    assert files_a.keys() == files_c.keys()  # same spec shape, so the same names
    for name in ("train_labels.csv", "test_labels.csv"):
        assert files_a[name].read_bytes() != files_c[name].read_bytes()
    images = [name for name in files_a if name.endswith(".png")]
    assert all(files_a[n].read_bytes() != files_c[n].read_bytes() for n in images)


def test_render_and_jitter_are_pure():
    scene = demo.make_scene(np.random.default_rng(2))
    K, R_cw, t_cw = demo.sample_cameras(np.random.default_rng(3), scene, 1, 80, 60)
    a = demo.render_view(scene, K[0], R_cw[0], t_cw[0], 80, 60)
    b = demo.render_view(scene, K[0], R_cw[0], t_cw[0], 80, 60)
    assert a.dtype == np.uint8 and a.shape == (60, 80, 3)
    np.testing.assert_array_equal(a, b)
    j1 = demo.photometric_jitter(a, np.random.default_rng(9))
    j2 = demo.photometric_jitter(a, np.random.default_rng(9))
    assert j1.dtype == np.uint8 and j1.shape == a.shape
    np.testing.assert_array_equal(j1, j2)
    assert not np.array_equal(j1, a)
    # a change of tone and noise, not of content
    assert np.corrcoef(j1.astype(float).ravel(), a.astype(float).ravel())[0, 1] > 0.8


# --------------------------------------------------------------------------- caching
def test_same_spec_is_not_regenerated_other_spec_is(tmp_path):
    root = demo.generate_demo_dataset(tmp_path / "data", MINI)
    stamps = {name: path.stat().st_mtime_ns for name, path in all_files(root).items()}
    assert demo.generate_demo_dataset(root, MINI) == root
    assert {name: path.stat().st_mtime_ns for name, path in all_files(root).items()} == stamps

    bigger = dataclasses.replace(MINI, train_views_per_scene=3, outliers_per_dataset=0)
    demo.generate_demo_dataset(root, bigger)
    assert demo.read_demo_spec(root) == bigger
    labels = read_submission(root / "train_labels.csv")
    assert len(labels) == 3 and OUTLIER_SCENE not in set(labels["scene"])
    pngs = [p for p in (root / "train").rglob("*.png")]
    assert len(pngs) == 3  # nothing left over from the first spec

    stamp = (root / "train_labels.csv").stat().st_mtime_ns
    demo.generate_demo_dataset(root, bigger, overwrite=True)
    assert (root / "train_labels.csv").stat().st_mtime_ns != stamp


def test_unknown_data_is_not_deleted(tmp_path):
    (tmp_path / "train" / "real_dataset").mkdir(parents=True)
    (tmp_path / "train" / "real_dataset" / "keep.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        demo.generate_demo_dataset(tmp_path, MINI)
    assert (tmp_path / "train" / "real_dataset" / "keep.png").exists()


def test_interrupted_generation_is_redone(tmp_path):
    root = demo.generate_demo_dataset(tmp_path / "data", MINI)
    (root / demo.INCOMPLETE_MARKER).touch()  # as if a later run had died half way
    demo.generate_demo_dataset(root, MINI)
    assert not (root / demo.INCOMPLETE_MARKER).exists()
    assert demo.read_demo_spec(root) == MINI


# --------------------------------------------------------------------------- poses
def flat_plane(corner, edge_u, edge_v, rgb, is_ground=False):
    texture = np.empty((32, 32, 3), np.uint8)
    texture[:] = rgb
    return demo.Plane(np.asarray(corner, float), np.asarray(edge_u, float),
                      np.asarray(edge_v, float), texture, is_ground)


def visible_from(center, point, planes, own):
    """Independent ray cast: no other rectangle (slightly enlarged, to stay off edges)
    crosses the segment from the camera centre to the point."""
    direction = point - center
    for j, plane in enumerate(planes):
        if j == own:
            continue
        normal = np.cross(plane.edge_u, plane.edge_v)
        denom = normal @ direction
        if abs(denom) < 1e-12:
            continue
        s = normal @ (plane.corner - center) / denom
        if not 1e-9 < s < 1 - 1e-6:
            continue
        hit = center + s * direction - plane.corner
        # rectangle coordinates of the hit, from the (not necessarily orthogonal) edges
        gram = np.array([[plane.edge_u @ plane.edge_u, plane.edge_u @ plane.edge_v],
                         [plane.edge_u @ plane.edge_v, plane.edge_v @ plane.edge_v]])
        su, sv = np.linalg.solve(gram, [plane.edge_u @ hit, plane.edge_v @ hit])
        if -0.05 <= su <= 1.05 and -0.05 <= sv <= 1.05:
            return False
    return True


def check_projected_colours(scene, colours, K, R_cw, t_cw, width, height, n_samples=60):
    """Project sample points of every plane with (K, R_cw, t_cw); where the point is visible
    the rendered pixel must show that plane's colour. Returns (checked, agreeing)."""
    image = demo.render_view(scene, K, R_cw, t_cw, width, height).astype(float)
    center = camera_centers(R_cw, t_cw)
    rng = np.random.default_rng(0)
    checked = agreeing = 0
    for i, plane in enumerate(scene.planes):
        st = rng.uniform(0.1, 0.9, (n_samples, 2))
        points = plane.point(st[:, 0], st[:, 1])
        cam = points @ R_cw.T + t_cw
        pix = cam @ K.T
        for X, z, (x, y, w) in zip(points, cam[:, 2], pix):
            u, v = x / w, y / w
            if z <= 0 or not (1 <= u < width - 2 and 1 <= v < height - 2):
                continue
            if not visible_from(center, X, scene.planes, i):
                continue
            pixel = image[int(round(v)), int(round(u))]
            nearest = int(np.argmin(np.linalg.norm(colours - pixel, axis=1)))
            checked += 1
            agreeing += nearest == i
    return checked, agreeing


def test_rendered_pixels_show_the_plane_at_the_projected_point():
    # hand-made scene: green ground, a red wall, a blue and a yellow tilted panel before it
    colours = np.array([[40, 160, 40], [200, 30, 30], [30, 40, 210], [230, 220, 40]], float)
    planes = (flat_plane([-10, -10, 0], [20, 0, 0], [0, 20, 0], colours[0], True),
              flat_plane([-2, 1, 2.5], [4, 0, 0], [0, 0, -2.5], colours[1]),
              flat_plane([-0.5, -0.5, 1.5], [1, 0, 0], [0, 0.3, -1.2], colours[2]),
              flat_plane([1.0, -1.5, 1.0], [0.8, 0.4, 0], [0, 0.2, -0.9], colours[3]))
    scene = demo.Scene(planes, np.array([0.0, 0.5, 1.0]), -90.0, 60.0, (5.0, 6.0), (1.5, 2.5),
                       np.array([150.0, 180, 230]), np.array([220.0, 225, 235]),
                       np.array([120.0, 110, 100]))
    width, height = 160, 120
    K = demo.intrinsics(150.0, width, height)
    total_checked = 0
    for center, roll in (([0.5, -6, 2], 0.0), ([-3, -5, 1.5], 12.0), ([3, -4, 3], -10.0)):
        R_cw = look_at_rotation(np.array(center, float), scene.target, roll_deg=roll)
        t_cw = -R_cw @ np.array(center, float)
        checked, agreeing = check_projected_colours(scene, colours, K, R_cw, t_cw,
                                                    width, height)
        assert agreeing == checked, (center, checked, agreeing)
        total_checked += checked
    assert total_checked > 150


@pytest.mark.parametrize("size", [96, 768])  # texture magnified / minified (mip-mapped)
def test_spots_project_to_the_labelled_pixel_to_a_fraction_of_a_pixel(size):
    """A bright spot at a known texel lands where K, R_cw, t_cw project its 3D point:
    catches half-pixel slips in the texel, pixel, mip-map or homography conventions."""
    spots = [(size * a, size * b) for a, b in ((0.21, 0.385), (0.73, 0.625), (0.5, 0.16))]
    sigma = 1.2 * size / 96  # texels: always about 3 pixels in the image
    yy, xx = np.mgrid[0:size, 0:size]
    texture = np.zeros((size, size, 3), np.uint8)
    for u, v in spots:  # texel coordinates, integer = texel centre
        texture[..., :] = np.maximum(
            texture, (255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma ** 2))
                      ).astype(np.uint8)[..., None])
    plane = demo.Plane(np.array([-2.0, 0.0, 3.0]), np.array([4.0, 0.0, 0.0]),
                       np.array([0.0, 0.5, -3.5]), texture)
    scene = demo.Scene((plane,), np.array([0.0, 0.0, 1.0]), 0.0, 90.0, (4.0, 5.0), (1.0, 2.0),
                       np.zeros(3), np.zeros(3), np.zeros(3))
    width, height = 200, 150
    checked = 0
    for center, roll, focal in (([0.2, -4.0, 1.4], 0.0, 190.0), ([-1.5, -3.5, 2.0], 9.0, 230.0),
                                ([1.2, -3.8, 0.8], -13.0, 210.0)):
        K = demo.intrinsics(focal, width, height)
        R_cw = look_at_rotation(np.array(center), np.array([0.0, 0.2, 1.3]), roll_deg=roll)
        t_cw = -R_cw @ np.array(center)
        image = demo.render_view(scene, K, R_cw, t_cw, width, height)[..., 0].astype(float)
        for u, v in spots:
            X = plane.point((u + 0.5) / size, (v + 0.5) / size)
            x, y, w = K @ (R_cw @ X + t_cw)
            expected = np.array([x / w, y / w])
            c, r = np.round(expected).astype(int)
            if not (10 <= c < width - 10 and 10 <= r < height - 10):
                continue
            checked += 1
            window = image[r - 10:r + 11, c - 10:c + 11]
            window = np.clip(window - 5.0, 0, None)  # drop the faint tail of the spot
            wy, wx = np.mgrid[r - 10:r + 11, c - 10:c + 11]
            found = np.array([np.sum(wx * window), np.sum(wy * window)]) / np.sum(window)
            assert np.linalg.norm(found - expected) < 0.15, (center, (u, v), found, expected)
    assert checked >= 7


def test_generated_scene_poses_hold_under_flat_colours():
    scene = demo.make_scene(np.random.default_rng(4))
    rng = np.random.default_rng(1)
    # a clearly different flat colour per plane, same geometry
    colours = np.array([cv2.cvtColor(np.uint8([[[int(h), 255, 220]]]), cv2.COLOR_HSV2RGB)[0, 0]
                        for h in np.linspace(0, 179, len(scene.planes), endpoint=False)], float)
    colours[0] = [128, 128, 128]  # the ground grey, to tell it from the rest
    flat = dataclasses.replace(scene, planes=tuple(
        flat_plane(p.corner, p.edge_u, p.edge_v, c, p.is_ground)
        for p, c in zip(scene.planes, colours)))
    width, height = 128, 96
    K, R_cw, t_cw = demo.sample_cameras(rng, flat, 3, width, height)
    checked = agreeing = 0
    for i in range(3):
        c, a = check_projected_colours(flat, colours, K[i], R_cw[i], t_cw[i], width, height)
        checked, agreeing = checked + c, agreeing + a
    assert checked > 100
    assert agreeing >= 0.97 * checked  # a few points sit on an edge a pixel away


def test_sift_relative_pose_matches_the_labels():
    """Independent check with OpenCV: features matched between two rendered views give the
    relative pose the labels say."""
    width, height = 320, 240
    scene = demo.make_scene(np.random.default_rng(0))
    K, R_cw, t_cw = demo.sample_cameras(np.random.default_rng(100), scene, 10, width, height)
    # the pair turned closest to 12 degrees apart: overlapping, with some baseline
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    i, j = min(pairs, key=lambda p: abs(rotation_angle_deg(R_cw[p[0]], R_cw[p[1]]) - 12))
    images = [cv2.cvtColor(demo.render_view(scene, K[k], R_cw[k], t_cw[k], width, height),
                           cv2.COLOR_RGB2GRAY) for k in (i, j)]
    sift = cv2.SIFT_create()
    (kp1, desc1), (kp2, desc2) = (sift.detectAndCompute(im, None) for im in images)
    matches = [m for m, n in cv2.BFMatcher().knnMatch(desc1, desc2, k=2)
               if m.distance < 0.8 * n.distance]
    assert len(matches) >= 50
    pts1 = np.float64([kp1[m.queryIdx].pt for m in matches]).reshape(-1, 1, 2)
    pts2 = np.float64([kp2[m.trainIdx].pt for m in matches]).reshape(-1, 1, 2)
    # the two cameras have different focal lengths: work in normalised coordinates
    norm1 = cv2.undistortPoints(pts1, K[i], None).reshape(-1, 2)
    norm2 = cv2.undistortPoints(pts2, K[j], None).reshape(-1, 2)
    E, inliers = cv2.findEssentialMat(norm1, norm2, np.eye(3), method=cv2.RANSAC, prob=0.999,
                                      threshold=1.0 / K[i][0, 0])
    _, R_est, t_est, _ = cv2.recoverPose(E[:3], norm1, norm2, np.eye(3), mask=inliers)
    R_rel = R_cw[j] @ R_cw[i].T  # camera i -> camera j
    t_rel = t_cw[j] - R_rel @ t_cw[i]
    assert rotation_angle_deg(R_est, R_rel) < 2.5
    cos = float(t_est.ravel() @ t_rel) / (np.linalg.norm(t_est) * np.linalg.norm(t_rel))
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 10


# --------------------------------------------------------------------------- spec
@pytest.mark.parametrize("changes, message", [
    ({"train_views_per_scene": 0}, "train_views_per_scene"),
    ({"image_width": 8}, "image_width"),
    ({"test_seen_scenes": 5}, "test_seen_scenes"),
    ({"test_seen_scenes": 0, "test_unseen_scenes": 0}, "at least one scene"),
    ({"outliers_per_dataset": -1}, "outliers_per_dataset"),
    ({"seed": 1.5}, "integer"),
    ({"test_datasets": True}, "integer"),
])
def test_bad_spec_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(demo.DemoSpec(), **changes)


def test_spec_accepts_numpy_integers_and_stays_json():
    spec = demo.DemoSpec(seed=np.int64(4), train_views_per_scene=np.int32(5))
    assert type(spec.seed) is int and spec == demo.DemoSpec(seed=4, train_views_per_scene=5)
    json.dumps(spec.to_json_dict())


def test_ensure_data_dir_generates_demo_data_only_for_the_demo_folder(tmp_path, monkeypatch):
    import config

    monkeypatch.chdir(tmp_path)  # the demo folder is relative to the working folder
    mini = {f.name: getattr(MINI, f.name) for f in dataclasses.fields(MINI) if f.name != "seed"}
    monkeypatch.setitem(config.DEMO_SIZES, "mini", mini)
    cfg = SimpleNamespace(data_dir=config.DEMO_DATA_DIR, demo_size="mini", seed=MINI.seed)
    root = demo.ensure_data_dir(cfg)
    assert root == demo.demo_folder(config.DEMO_DATA_DIR, "mini") != Path(config.DEMO_DATA_DIR)
    assert demo.read_demo_spec(root) == MINI
    assert demo.demo_folder(config.DEMO_DATA_DIR, "default") == Path(config.DEMO_DATA_DIR)

    real = tmp_path / "competition"
    real.mkdir()
    assert demo.ensure_data_dir(SimpleNamespace(data_dir=str(real), demo_size="mini",
                                                seed=1)) == real
    assert not (real / "train").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        demo.ensure_data_dir(SimpleNamespace(data_dir=str(tmp_path / "missing"),
                                             demo_size="mini", seed=1))


def test_command_line_writes_the_dataset(tmp_path, capsys):
    args = [str(tmp_path / "cli")] + [f"--{f.name.replace('_', '-')}={getattr(MINI, f.name)}"
                                      for f in dataclasses.fields(MINI)]
    assert demo.main(args) == 0
    assert demo.read_demo_spec(tmp_path / "cli") == MINI
    assert "demo data ready" in capsys.readouterr().out
    assert re.fullmatch(r"demo_train_a_\d{4}\.png",
                        read_submission(tmp_path / "cli" / "train_labels.csv")["image"][0])


def test_the_command_line_refuses_a_file_as_its_folder(tmp_path, capsys):
    from src.demo_data import main

    (tmp_path / "a_file").write_text("x")
    assert main([str(tmp_path / "a_file")]) == 2
    assert "is a file" in capsys.readouterr().err
