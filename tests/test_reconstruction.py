"""Incremental SfM of a cluster from our keypoints and matches: on a synthetic ground truth
(projected 3D points, as pycolmap's own tests do) and on rendered demo views.

On the demo views, keypoints and verified matches come from OpenCV SIFT + ratio test +
MAGSAC here in the test, so these tests do not depend on the project's own feature and
matching stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from src.demo_data import make_scene, render_view, sample_cameras
from src.geometry import camera_centers, rotation_angle_deg, umeyama_similarity
from src.geometric.reconstruction import (Model, ReconConf, build_database, load_models,
                                          pinhole_keypoints, poses_for_images, read_image_size,
                                          reconstruct, reconstruct_scene)
from tests.synthetic_cluster import assert_poses_match, synthesize_cluster

WIDTH, HEIGHT = 320, 240
N_VIEWS = 10
SCENE_SEED = 4  # a scene whose 10 random views are all connected by matches
STRANGER_SEED = 11  # an unrelated scene that gives the cluster an unregistrable image


@dataclass
class Cluster:
    """Rendered views of one scene plus one view of another, with SIFT keypoints and
    verified matches over all pairs."""

    image_dir: Path
    names: list[str]  # the scene's views, then "stranger.png"
    K: np.ndarray  # (N_VIEWS, 3, 3) ground truth of the scene's views
    R_cw: np.ndarray  # (N_VIEWS, 3, 3)
    t_cw: np.ndarray  # (N_VIEWS, 3)
    keypoints: dict[str, np.ndarray]
    matches: dict[tuple[str, str], np.ndarray]

    @property
    def scene_views(self) -> list[str]:
        return self.names[:N_VIEWS]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _sift_matches(image_dir: Path, names: list[str]
                  ) -> tuple[dict[str, np.ndarray], dict[tuple[str, str], np.ndarray]]:
    """SIFT keypoints (N, 2) float32 and MAGSAC-verified ratio-test matches for all pairs."""
    sift = cv2.SIFT_create(nfeatures=2000)
    keypoints, descriptors = {}, {}
    for name in names:
        gray = cv2.imread(str(image_dir / name), cv2.IMREAD_GRAYSCALE)
        kps, desc = sift.detectAndCompute(gray, None)
        keypoints[name] = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        descriptors[name] = desc
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    matches = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if descriptors[a] is None or descriptors[b] is None:
                continue
            knn = matcher.knnMatch(descriptors[a], descriptors[b], k=2)
            m = np.array([[p[0].queryIdx, p[0].trainIdx] for p in knn
                          if len(p) == 2 and p[0].distance < 0.8 * p[1].distance],
                         np.int32).reshape(-1, 2)
            if len(m) < 8:
                continue
            F, mask = cv2.findFundamentalMat(keypoints[a][m[:, 0]], keypoints[b][m[:, 1]],
                                             cv2.USAC_MAGSAC, 1.0, 0.999, 10000)
            if F is None:
                continue
            inliers = m[mask.ravel().astype(bool)]
            if len(inliers) >= 15:
                matches[(a, b)] = inliers
    return keypoints, matches


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    image_dir = tmp_path_factory.mktemp("cluster_images")
    rng = np.random.default_rng(SCENE_SEED)
    scene = make_scene(rng)
    K, R_cw, t_cw = sample_cameras(rng, scene, N_VIEWS, WIDTH, HEIGHT)
    names = [f"view{i:02d}.png" for i in range(N_VIEWS)]
    for i, name in enumerate(names):
        _write_png(image_dir / name, render_view(scene, K[i], R_cw[i], t_cw[i], WIDTH, HEIGHT))
    other_rng = np.random.default_rng(STRANGER_SEED)
    other = make_scene(other_rng)
    K_o, R_o, t_o = sample_cameras(other_rng, other, 1, WIDTH, HEIGHT)
    _write_png(image_dir / "stranger.png", render_view(other, K_o[0], R_o[0], t_o[0], WIDTH,
                                                       HEIGHT))
    names.append("stranger.png")
    keypoints, matches = _sift_matches(image_dir, names)
    return Cluster(image_dir, names, K, R_cw, t_cw, keypoints, matches)


@pytest.fixture(scope="module")
def mapped(cluster, tmp_path_factory):
    """One reconstruction of the cluster with the default options, and its work folder."""
    work_dir = tmp_path_factory.mktemp("mapped")
    models = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                         work_dir, ReconConf())
    return models, work_dir


def _pose_errors(cluster: Cluster, poses: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera-centre errors (after a similarity alignment) as fractions of the camera spread,
    and the errors (degrees) of all pairwise relative rotations, over the registered views."""
    names = [n for n in cluster.scene_views if n in poses]
    idx = [cluster.names.index(n) for n in names]
    R_est = np.array([poses[n][-2] for n in names])
    t_est = np.array([poses[n][-1] for n in names])
    C_est = camera_centers(R_est, t_est)
    C_true = camera_centers(cluster.R_cw[idx], cluster.t_cw[idx])
    s, R, t = umeyama_similarity(C_est, C_true)
    spread = float(np.mean(np.linalg.norm(C_true - C_true.mean(axis=0), axis=1)))
    centre_err = np.linalg.norm(s * C_est @ R.T + t - C_true, axis=1) / spread
    R_true = cluster.R_cw[idx]
    rot_err = np.array([rotation_angle_deg(R_est[j] @ R_est[i].T, R_true[j] @ R_true[i].T)
                        for i in range(len(names)) for j in range(i + 1, len(names))])
    return centre_err, rot_err, spread


@pytest.mark.parametrize("mapper", ["incremental", "global"])
def test_reconstructs_a_synthetic_cluster_to_its_true_poses(tmp_path, mapper):
    truth = synthesize_cluster()
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()  # pycolmap wants the folder; with image_sizes given no file is read
    models = reconstruct(image_dir, truth.names, truth.keypoints, truth.matches,
                         tmp_path / "work", ReconConf(mapper=mapper), image_sizes=sizes)
    assert len(models) == 1
    assert_poses_match(truth, models[0], max_rotation_error_deg=0.2, max_center_error=0.01,
                       max_focal_error=0.01)
    assert models[0].num_points3D > 0.8 * len(truth.points)


@pytest.mark.parametrize("focal_spread, shared", [(0.0, True), (0.2, False)])
def test_auto_camera_sharing_keeps_shared_cameras_only_for_one_focal_length(
        tmp_path, focal_spread, shared):
    """One lens: the shared camera fits as well and is kept; a zoom (focal lengths 0.8-1.2x
    apart): one focal length cannot fit them, and the shared models refit with a camera per
    image are kept. No second mapping either way; the poses and focal lengths are right."""
    truth = synthesize_cluster(seed=3, focal_spread=focal_spread)
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    models, why, mapper = reconstruct_scene(image_dir, truth.names, truth.keypoints,
                                            truth.matches, tmp_path / "work",
                                            ReconConf(mapper="global"), image_sizes=sizes)
    assert mapper == "global"
    assert len(models) == 1 and models[0].shared_cameras is shared
    assert why.startswith("shared" if shared else "per image"), why
    assert {p.name for p in (tmp_path / "work").iterdir()} == {"cameras-size", "cameras-split"}
    assert_poses_match(truth, models[0], max_rotation_error_deg=0.3, max_center_error=0.01,
                       max_focal_error=0.01)


def test_per_image_cameras_are_mapped_as_separate_cameras_where_they_are_kept(tmp_path):
    """Images all of different sizes leave nothing to weigh: one mapping, its pairs seen by
    COLMAP's estimator as two cameras (pair_cameras "separate"), and the poses right."""
    truth = synthesize_cluster(seed=3, num_images=6)
    sizes = {name: (640 + k, 480 + k) for k, name in enumerate(truth.names)}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    sfm = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                            tmp_path / "work", ReconConf(mapper="global"), image_sizes=sizes)
    assert sfm.cameras == "per image (no two images of one size)"
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["cameras-image"]
    assert len(sfm.models) == 1 and sfm.models[0].num_registered == 6
    assert_poses_match(truth, sfm.models[0], max_rotation_error_deg=0.3, max_center_error=0.01,
                       max_focal_error=0.02)


@pytest.mark.parametrize("seed", [3, 4])
def test_two_lenses_at_one_resolution_get_a_camera_each_and_every_pose(tmp_path, seed):
    """A phone's main and ultra-wide cameras: one image size, focal lengths 2x apart, every
    other photo from each. One camera cannot fit them (median error ratio over 2); with the
    pipeline's mappers ("auto", global first) every pose and focal length is right. (Seed 3:
    the global mapper's refit leaves one camera off, which explains few of its matches, and
    the incremental mapper, mapping with a camera per image, holds them all.)"""
    factors = np.where(np.arange(12) % 2 == 0, 1.0, 0.5)
    truth = synthesize_cluster(seed=seed, num_images=12, focal_factors=factors, noise_px=0.3)
    sizes = {name: truth.image_size for name in truth.names}
    sfm = reconstruct_scene(tmp_path, truth.names, truth.keypoints, truth.matches,
                            tmp_path / "work", ReconConf(mapper="auto", fallback_mapper="global"),
                            image_sizes=sizes)
    assert sfm.cameras.startswith("per image"), sfm.cameras
    assert sfm.mapper.startswith("incremental" if seed == 3 else "global"), sfm.mapper
    assert len(sfm.models) == 1 and not sfm.models[0].shared_cameras
    assert_poses_match(truth, sfm.models[0], max_rotation_error_deg=0.5, max_center_error=0.02,
                       max_focal_error=0.02)


def test_the_camera_choice_is_cached_with_the_refit_models(tmp_path, monkeypatch):
    """A zoom: the refit per-image models and the decision are cached beside the shared
    models; a second call reads them back with no bundle adjustment, and gives the same
    models; overwrite fits again."""
    from src.geometric import reconstruction

    truth = synthesize_cluster(seed=3, focal_spread=0.2)
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    conf = ReconConf(mapper="global")
    first = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                              tmp_path / "work", conf, image_sizes=sizes)
    assert "more than 1.125x, per-image focal lengths plausible" in first.cameras
    assert first.cameras.endswith("the shared models refit with them)"), first.cameras
    assert len(load_models(tmp_path / "work" / "cameras-split" / "models")) == 1

    fits = []
    real_fit = reconstruction.per_image_fit
    monkeypatch.setattr(reconstruction, "per_image_fit",
                        lambda *args, **kwargs: fits.append(1) or real_fit(*args, **kwargs))
    again = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                              tmp_path / "work", conf, image_sizes=sizes)
    assert fits == [] and again.cameras == first.cameras
    for name, (R_cw, t_cw) in first.models[0].poses.items():
        np.testing.assert_array_equal(again.models[0].poses[name][0], R_cw)
        np.testing.assert_array_equal(again.models[0].poses[name][1], t_cw)
        np.testing.assert_array_equal(again.models[0].intrinsics[name],
                                      first.models[0].intrinsics[name])
    reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                      tmp_path / "work", conf, overwrite=True, image_sizes=sizes)
    assert fits == [1]

    # one lens: the decision to keep the shared cameras is cached too, with no models
    one_lens = synthesize_cluster(seed=3)
    kept = reconstruct_scene(image_dir, one_lens.names, one_lens.keypoints, one_lens.matches,
                             tmp_path / "one", conf, image_sizes=sizes)
    assert kept.cameras.startswith("shared (") and fits == [1, 1]
    assert load_models(tmp_path / "one" / "cameras-split" / "models") == []
    again = reconstruct_scene(image_dir, one_lens.names, one_lens.keypoints, one_lens.matches,
                              tmp_path / "one", conf, image_sizes=sizes)
    assert again.cameras == kept.cameras and fits == [1, 1]
    # another bar is another decision: fitted again, the shared models not mapped again
    strict = replace(conf, shared_camera_free_error_ratio=1.0, shared_camera_max_error_ratio=1.0)
    reconstruct_scene(image_dir, one_lens.names, one_lens.keypoints, one_lens.matches,
                      tmp_path / "one", strict, image_sizes=sizes)
    assert fits == [1, 1, 1]


def test_a_failed_per_image_fit_keeps_the_shared_cameras(tmp_path, monkeypatch, caplog):
    """pycolmap failing in the camera choice's fit costs the scene nothing: the shared
    models stay, with a warning, and the failure is not cached."""
    from src.geometric import reconstruction

    truth = synthesize_cluster(seed=3, focal_spread=0.2)
    sizes = {name: truth.image_size for name in truth.names}

    def fails(*args, **kwargs):
        raise RuntimeError("simulated bundle adjustment failure")

    monkeypatch.setattr(reconstruction, "per_image_fit", fails)
    sfm = reconstruct_scene(tmp_path, truth.names, truth.keypoints, truth.matches,
                            tmp_path / "work", ReconConf(mapper="global"), image_sizes=sizes)
    assert sfm.cameras == "shared (the per-image fit failed (RuntimeError))"
    assert sfm.models and sfm.models[0].num_registered == len(truth.names)
    assert "the per-image fit of" in caplog.text and "failed" in caplog.text
    assert not (tmp_path / "work" / "cameras-split" / "models").exists()


def test_shared_cameras_that_leave_images_out_are_weighed_against_per_image_ones(
        tmp_path, monkeypatch):
    """Where the shared cameras' models leave an image with verified matches unregistered,
    the scene is also mapped with a camera per image, and those models kept when they
    register more (a second lens that one camera cannot fit leaves its photos out)."""
    from src.geometric import reconstruction

    truth = synthesize_cluster(seed=3)
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    real_once = reconstruction._reconstruct_once

    def losing_first_image(*sharings: str):
        """_reconstruct_once whose models, when mapped with one of ``sharings``, leave the
        scene's first image out."""
        def mapped(*args):
            models = real_once(*args)
            if args[6].camera_sharing not in sharings:
                return models
            return [replace(m, poses={n: p for n, p in m.poses.items()
                                      if n != truth.names[0]}) for m in models]
        return mapped

    monkeypatch.setattr(reconstruction, "_reconstruct_once", losing_first_image("size"))
    sfm = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                            tmp_path / "work", ReconConf(mapper="global"), image_sizes=sizes)
    assert sfm.cameras == (f"per image (shared cameras register {len(truth.names) - 1} "
                           f"images, a camera per image {len(truth.names)})"), sfm.cameras
    assert sfm.models[0].num_registered == len(truth.names)

    # per-image cameras that register no more: the fit decides (one lens: shared kept)
    monkeypatch.setattr(reconstruction, "_reconstruct_once",
                        losing_first_image("size", "image"))
    sfm = reconstruct_scene(image_dir, truth.names, truth.keypoints, truth.matches,
                            tmp_path / "again", ReconConf(mapper="global"), image_sizes=sizes)
    assert sfm.cameras.startswith("shared (median errors"), sfm.cameras
    assert (tmp_path / "again" / "cameras-image" / "models").is_dir()


def test_shared_cameras_are_one_camera_per_image_size(tmp_path):
    truth = synthesize_cluster(num_images=4)
    sizes = {name: truth.image_size for name in truth.names}
    sizes[truth.names[-1]] = (700, 500)  # another camera: keypoints still inside it
    for sharing, expected in (("size", 2), ("image", 4)):
        db_path = tmp_path / f"{sharing}.db"
        build_database(db_path, tmp_path, truth.names, truth.keypoints, truth.matches,
                       ReconConf(camera_sharing=sharing), image_sizes=sizes)
        with pycolmap.Database.open(db_path) as db:
            assert db.num_cameras() == expected
            assert db.num_rigs() == expected and db.num_images() == 4


def test_camera_sharing_and_pair_cameras_refuse_unknown_values():
    with pytest.raises(ValueError, match="camera_sharing"):
        ReconConf(camera_sharing="exif")
    with pytest.raises(ValueError, match="pair_cameras"):
        ReconConf(pair_cameras="auto")
    with pytest.raises(ValueError, match="shared_camera_max_error_ratio"):
        ReconConf(shared_camera_max_error_ratio=0.5)
    with pytest.raises(ValueError, match="shared_camera_free_error_ratio"):
        ReconConf(shared_camera_free_error_ratio=1.4)  # above the 1.3 of max


def test_mapper_choice_is_validated_and_part_of_the_cache_key():
    with pytest.raises(ValueError, match="mapper"):
        ReconConf(mapper="hierarchical")
    assert ReconConf(mapper="global").cache_key() != ReconConf().cache_key()
    options = ReconConf(mapper="global", seed=7, num_threads=1, min_model_size=4).global_options()
    assert options.random_seed == options.mapper.random_seed == 7
    assert options.mapper.rotation_averaging.random_seed == 7
    assert options.num_threads == options.mapper.num_threads == 1
    assert options.min_model_size == 4 and options.decompose_relative_pose


# --------------------------------------------------------------------------- accuracy
def test_reconstructs_the_cluster_accurately(cluster, mapped):
    models, _ = mapped
    assert len(models) >= 1
    poses = poses_for_images(models, cluster.names)
    registered = [n for n in cluster.scene_views if n in poses]
    assert len(registered) >= 0.8 * N_VIEWS, f"only {len(registered)}/{N_VIEWS} registered"
    assert all(poses[n][0] == 0 for n in registered)  # one scene, one model
    centre_err, rot_err, _ = _pose_errors(cluster, poses)
    assert np.median(centre_err) < 0.05, centre_err
    assert np.max(centre_err) < 0.15, centre_err
    assert np.median(rot_err) < 1.0 and np.max(rot_err) < 3.0, rot_err
    for name in registered:
        R_cw, t_cw = models[0].poses[name]
        assert R_cw.shape == (3, 3) and t_cw.shape == (3,)
        np.testing.assert_allclose(R_cw @ R_cw.T, np.eye(3), atol=1e-9)
        # Refined focal lengths near the truth (the prior was 1.2 x 320 = 384 px).
        true_focal = cluster.K[cluster.names.index(name)][0, 0]
        assert models[0].intrinsics[name][0, 0] == pytest.approx(true_focal, rel=0.1)
    assert models[0].num_points3D == len(models[0].points3D) > 100


def test_unregistrable_image_is_absent_from_poses(cluster, mapped):
    models, _ = mapped
    poses = poses_for_images(models, cluster.names)
    assert "stranger.png" not in poses
    assert all("stranger.png" not in m.poses for m in models)


def test_models_sorted_largest_first_and_small_ones_dropped(cluster, tmp_path):
    # Two scenes in one "cluster": the first 6 views of the scene, plus the last 4 views
    # renamed so that they cannot match them (no cross matches): two models, 6 then 4.
    first, second = cluster.scene_views[:6], cluster.scene_views[6:]
    rename = {n: f"b_{n}" for n in second}
    for n in second:
        (cluster.image_dir / rename[n]).write_bytes((cluster.image_dir / n).read_bytes())
    images = first + [rename[n] for n in second]
    keypoints = {**{n: cluster.keypoints[n] for n in first},
                 **{rename[n]: cluster.keypoints[n] for n in second}}
    matches = {}
    for (a, b), m in cluster.matches.items():
        if a in first and b in first:
            matches[(a, b)] = m
        elif a in second and b in second:
            matches[(rename[a], rename[b])] = m
    models = reconstruct(cluster.image_dir, images, keypoints, matches, tmp_path / "two",
                         ReconConf(min_model_size=3))
    sizes = [m.num_registered for m in models]
    assert sizes == sorted(sizes, reverse=True) and len(models) >= 2, sizes
    assert set(models[0].poses) <= set(first) and set(models[1].poses) <= set(images[6:])
    # The same with a single model allowed, and with a minimum size above the second model.
    assert len(reconstruct(cluster.image_dir, images, keypoints, matches, tmp_path / "one",
                           ReconConf(max_models=1))) == 1
    big_only = reconstruct(cluster.image_dir, images, keypoints, matches, tmp_path / "big",
                           ReconConf(min_model_size=sizes[1] + 1))
    assert [m.num_registered for m in big_only] == sizes[:1]


# --------------------------------------------------------------------------- caching
def test_second_call_loads_the_cache_and_overwrite_maps_again(cluster, mapped, monkeypatch):
    models, work_dir = mapped
    calls = []
    real_mapping = pycolmap.incremental_mapping

    def counting_mapping(*args, **kwargs):
        calls.append(args)
        return real_mapping(*args, **kwargs)

    monkeypatch.setattr(pycolmap, "incremental_mapping", counting_mapping)
    cached = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                         work_dir, ReconConf())
    assert calls == []
    assert [m.num_registered for m in cached] == [m.num_registered for m in models]
    for model, again in zip(models, cached):
        assert again.poses.keys() == model.poses.keys()
        for name, (R_cw, t_cw) in model.poses.items():
            np.testing.assert_allclose(again.poses[name][0], R_cw, atol=1e-12)
            np.testing.assert_allclose(again.poses[name][1], t_cw, atol=1e-12)
        np.testing.assert_allclose(again.points3D, model.points3D, atol=1e-12)
    # camera_sharing "auto" maps with shared cameras, and where it tries them with a camera
    # per image; each way cached in its own folder, as are the shared models refit
    shared = models[0].shared_cameras
    kept = work_dir / ("cameras-size" if shared else "cameras-split"
                       if (work_dir / "cameras-split").is_dir() else "cameras-image")
    assert [m.num_registered for m in load_models(kept / "models")] == \
        [m.num_registered for m in models]
    mappings = 1 + (work_dir / "cameras-image" / "models").is_dir()

    reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                work_dir, ReconConf(), overwrite=True)
    assert len(calls) == mappings
    # Options that change the result are part of the cache key; verbosity is not.
    reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                work_dir, ReconConf(colmap_verbose=True))
    assert len(calls) == mappings
    reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                work_dir, ReconConf(min_num_matches=20, camera_sharing="image"))
    assert len(calls) == mappings + 1
    assert ReconConf(pair_cameras="one").cache_key() != ReconConf().cache_key()
    assert ReconConf(colmap_verbose=True).cache_key() == ReconConf().cache_key()
    assert ReconConf(seed=1).cache_key() != ReconConf().cache_key()
    lean = ReconConf(ba_ignore_redundant_points=False)
    assert lean.cache_key() != ReconConf().cache_key()
    assert ReconConf().pipeline_options().mapper.ba_global_ignore_redundant_points3D is True
    assert lean.pipeline_options().mapper.ba_global_ignore_redundant_points3D is False


def test_mapping_time_limit_defaults_to_a_per_image_budget():
    assert ReconConf().runtime_limit(23) == 60 + 5 * 23
    assert ReconConf().pipeline_options(23).max_runtime_seconds == 175
    assert ReconConf(max_runtime_seconds=30).pipeline_options(23).max_runtime_seconds == 30
    assert ReconConf(max_runtime_seconds=-1).runtime_limit(500) == -1
    with pytest.raises(ValueError, match="max_runtime_seconds"):
        ReconConf(max_runtime_seconds=-2)


def test_changed_matches_are_not_served_from_the_cache(cluster, tmp_path, monkeypatch):
    subset = cluster.scene_views[:5]
    matches = {k: m for k, m in cluster.matches.items() if k[0] in subset and k[1] in subset}
    conf = ReconConf(camera_sharing="image")
    reconstruct(cluster.image_dir, subset, cluster.keypoints, matches, tmp_path, conf)
    calls = []
    monkeypatch.setattr(pycolmap, "incremental_mapping",
                        lambda *a, **k: calls.append(a) or {})
    fewer = dict(list(matches.items())[:-1])
    reconstruct(cluster.image_dir, subset, cluster.keypoints, fewer, tmp_path, conf)
    assert len(calls) == 1


# --------------------------------------------------------------------------- failures
def test_fewer_than_two_images_gives_no_model_without_pycolmap(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(pycolmap, "incremental_mapping",
                        lambda *a, **k: pytest.fail("pycolmap must not be called"))
    name = cluster.names[0]
    assert reconstruct(cluster.image_dir, [name], cluster.keypoints, {}, tmp_path) == []
    assert reconstruct(cluster.image_dir, [], {}, {}, tmp_path) == []


def test_cluster_without_matches_warns_and_gives_no_model(cluster, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="src.geometric.reconstruction"):
        models = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, {},
                             tmp_path, name="demo/cluster7")
    assert models == []
    assert any("demo/cluster7" in r.getMessage() and "matches" in r.getMessage()
               for r in caplog.records)


def test_pycolmap_failure_warns_gives_no_model_and_is_not_cached(cluster, tmp_path,
                                                                   monkeypatch, caplog):
    def failing(*args, **kwargs):
        raise RuntimeError("simulated mapper crash")

    monkeypatch.setattr(pycolmap, "incremental_mapping", failing)
    with caplog.at_level(logging.WARNING, logger="src.geometric.reconstruction"):
        models = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints,
                             cluster.matches, tmp_path)
    assert models == []
    assert any(str(tmp_path) in r.getMessage() and "simulated mapper crash" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / "models").exists()


def test_no_model_large_enough_warns(cluster, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="src.geometric.reconstruction"):
        models = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints,
                             cluster.matches, tmp_path, ReconConf(min_model_size=50))
    assert models == []
    assert any("no model" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_the_same_models(cluster, mapped, tmp_path):
    models, _ = mapped
    again = reconstruct(cluster.image_dir, cluster.names, cluster.keypoints, cluster.matches,
                        tmp_path, ReconConf())
    assert [m.poses.keys() for m in again] == [m.poses.keys() for m in models]
    for model, other in zip(models, again):
        for name, (R_cw, t_cw) in model.poses.items():
            np.testing.assert_allclose(other.poses[name][0], R_cw, atol=1e-9)
            np.testing.assert_allclose(other.poses[name][1], t_cw, atol=1e-9)


# --------------------------------------------------------------------------- database
def test_database_holds_cameras_rigs_frames_keypoints_and_verified_pairs(cluster, tmp_path):
    names = cluster.scene_views[:4]
    # Give one pair in reversed order: it must be stored the COLMAP way (id1 < id2).
    pairs = {k: m for k, m in cluster.matches.items() if k[0] in names and k[1] in names}
    (a, b), m = next(iter(pairs.items()))
    pairs = {**{k: v for k, v in pairs.items() if k != (a, b)}, (b, a): m[:, ::-1]}
    db_path = tmp_path / "cluster.db"
    build_database(db_path, cluster.image_dir, names, cluster.keypoints, pairs)
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.db"]  # no temporary left
    with pycolmap.Database.open(db_path) as db:
        assert (db.num_cameras(), db.num_rigs(), db.num_frames(), db.num_images()) == (4, 4, 4, 4)
        ids = {im.name: im.image_id for im in db.read_all_images()}
        camera = db.read_camera(db.read_image(ids[names[0]]).camera_id)
        assert camera.model_name == "SIMPLE_RADIAL"
        assert (camera.width, camera.height) == (WIDTH, HEIGHT)
        assert camera.focal_length == pytest.approx(1.2 * WIDTH)
        assert (camera.principal_point_x, camera.principal_point_y) == (WIDTH / 2, HEIGHT / 2)
        np.testing.assert_allclose(db.read_keypoints(ids[names[0]])[:, :2],
                                   cluster.keypoints[names[0]] + 0.5, atol=1e-4)
        assert db.num_verified_image_pairs() == len(pairs)
        id_a, id_b = ids[a], ids[b]
        stored = db.read_two_view_geometry(min(id_a, id_b), max(id_a, id_b))
        assert stored.config == pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
        expected = m if id_a < id_b else m[:, ::-1]
        # Stored as given, less matches reusing a keypoint (SIFT has a few; COLMAP assumes
        # one-to-one matches).
        stored_rows = {tuple(r) for r in stored.inlier_matches}
        assert stored_rows <= {tuple(r) for r in expected}
        assert len(stored_rows) >= 0.9 * len(expected)
        for column in (0, 1):
            assert len(np.unique(stored.inlier_matches[:, column])) == len(stored_rows)


def test_matches_are_made_one_to_one_keeping_the_first():
    from src.geometric.reconstruction import _one_to_one
    m = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [3, 2], [4, 4]])
    np.testing.assert_array_equal(_one_to_one(m), [[0, 0], [1, 1], [2, 2], [4, 4]])


def test_bad_inputs_raise_clear_errors(cluster, tmp_path):
    names = cluster.scene_views[:2]
    pair = (names[0], names[1])
    good = {pair: cluster.matches[pair]}
    with pytest.raises(ValueError, match="camera_model"):
        ReconConf(camera_model="FISHEYE_MAGIC")
    with pytest.raises(ValueError, match="min_model_size"):
        ReconConf(min_model_size=1)
    with pytest.raises(ValueError, match="no keypoints"):
        reconstruct(cluster.image_dir, names, {names[0]: cluster.keypoints[names[0]]}, good,
                    tmp_path)
    out_of_range = {pair: np.array([[0, len(cluster.keypoints[names[1]])]], np.int32)}
    with pytest.raises(ValueError, match="out of range"):
        reconstruct(cluster.image_dir, names, cluster.keypoints, out_of_range, tmp_path)
    with pytest.raises(ValueError, match="given twice"):
        reconstruct(cluster.image_dir, names, cluster.keypoints,
                    {**good, pair[::-1]: good[pair][:, ::-1]}, tmp_path)
    scaled = {**cluster.keypoints, names[0]: cluster.keypoints[names[0]] * 4}
    with pytest.raises(ValueError, match="outside"):
        build_database(tmp_path / "x.db", cluster.image_dir, names, scaled, good)


def test_pinhole_keypoints_take_out_each_images_lens_distortion():
    """Checked against the distortion written out: SIMPLE_RADIAL moves normalised
    coordinates x to x (1 + k1 |x|^2), RADIAL to x (1 + k1 |x|^2 + k2 |x|^4)."""
    rng = np.random.default_rng(0)
    pinhole = rng.uniform([0, 0], [640, 480], size=(50, 2))
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    normalized = (pinhole - K[:2, 2]) / 600.0
    r2 = np.sum(normalized ** 2, axis=1, keepdims=True)
    seen = {"radial": K[:2, 2] + 600.0 * normalized * (1 - 0.2 * r2),
            "radial2": K[:2, 2] + 600.0 * normalized * (1 + 0.1 * r2 - 0.05 * r2 ** 2),
            "pinhole": pinhole, "left_out": pinhole + 3.0}
    eye, zero = np.eye(3), np.zeros(3)
    cameras = {"radial": ("SIMPLE_RADIAL", 640, 480, (600.0, 320.0, 240.0, -0.2)),
               "radial2": ("RADIAL", 640, 480, (600.0, 320.0, 240.0, 0.1, -0.05)),
               "pinhole": ("PINHOLE", 640, 480, (600.0, 600.0, 320.0, 240.0))}
    model = Model(poses={n: (eye, zero) for n in cameras}, num_points3D=0,
                  points3D=np.zeros((0, 3)), intrinsics={n: K for n in cameras},
                  cameras=cameras)
    corrected = pinhole_keypoints([model], seen)
    np.testing.assert_allclose(corrected["radial"], pinhole, atol=1e-6)
    np.testing.assert_allclose(corrected["radial2"], pinhole, atol=1e-6)
    assert corrected["pinhole"] is seen["pinhole"]  # nothing to take out
    assert corrected["left_out"] is seen["left_out"]  # no model registers it
    # a model without camera parameters (one built by hand) leaves its images alone
    bare = Model(poses={"radial": (eye, zero)}, num_points3D=0, points3D=np.zeros((0, 3)),
                 intrinsics={"radial": K})
    assert pinhole_keypoints([bare], seen)["radial"] is seen["radial"]


def test_read_image_size_and_poses_for_images(cluster):
    assert read_image_size(cluster.image_dir / cluster.names[0]) == (WIDTH, HEIGHT)
    eye, zero = np.eye(3), np.zeros(3)
    small = Model(poses={"a": (eye, zero)}, num_points3D=0, points3D=np.zeros((0, 3)),
                  intrinsics={})
    large = Model(poses={"a": (eye, zero + 1), "b": (eye, zero)}, num_points3D=0,
                  points3D=np.zeros((0, 3)), intrinsics={})
    poses = poses_for_images([small, large], ["a", "b", "c"])
    assert set(poses) == {"a", "b"}
    assert poses["a"][0] == 1 and np.all(poses["a"][2] == 1)  # the larger model wins


def test_colmap_pair_geometry_tells_planar_pairs_apart(tmp_path):
    """A pair seeing only a plane: COLMAP's estimate says so (its relative pose then comes
    from H); the 8-point path calls it a general F pair."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(2)
    plane = np.c_[rng.uniform(-1, 1, size=(300, 2)), np.zeros(300)]
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    keypoints = {}
    for name, R, t_cw in (("a.png", np.eye(3), np.array([0, 0, 4.0])),
                          ("b.png", Rotation.from_euler("y", 12, degrees=True).as_matrix(),
                           np.array([-0.8, 0.1, 4.2]))):
        x = (plane @ R.T + t_cw) @ K.T
        keypoints[name] = (x[:, :2] / x[:, 2:] + rng.normal(scale=0.2, size=(300, 2))
                           ).astype(np.float32)
    index = np.arange(300)
    matches = {("a.png", "b.png"): np.stack([index, index], axis=1)}
    sizes = {"a.png": (640, 480), "b.png": (640, 480)}
    config = pycolmap.TwoViewGeometryConfiguration
    for geometry, expected in (("colmap", {config.PLANAR, config.PLANAR_OR_PANORAMIC}),
                               ("fundamental", {config.UNCALIBRATED})):
        db_path = tmp_path / f"{geometry}.db"
        build_database(db_path, tmp_path, ["a.png", "b.png"], keypoints, matches,
                       ReconConf(pair_geometry=geometry), image_sizes=sizes)
        with pycolmap.Database.open(db_path) as db:
            stored = db.read_two_view_geometry(1, 2)
        assert stored.config in expected, (geometry, stored.config)
        assert len(stored.inlier_matches) >= 0.95 * 300
    with pytest.raises(ValueError, match="pair_geometry"):
        ReconConf(pair_geometry="homography")


def test_a_damaged_model_cache_is_mapped_again(tmp_path, caplog):
    truth = synthesize_cluster()
    sizes = {name: truth.image_size for name in truth.names}
    (tmp_path / "images").mkdir()
    args = (tmp_path / "images", truth.names, truth.keypoints, truth.matches, tmp_path / "work",
            ReconConf(camera_sharing="image"))
    first = reconstruct(*args, image_sizes=sizes)
    for path in (tmp_path / "work" / "models" / "0").iterdir():
        path.write_bytes(path.read_bytes()[:10])  # every file of model 0 cut short
    with caplog.at_level(logging.WARNING):
        again = reconstruct(*args, image_sizes=sizes)
    assert "cannot be read" in caplog.text and "mapped again" in caplog.text
    assert len(again) == len(first) and again[0].num_registered == first[0].num_registered


def test_weakly_supported_image_of_a_global_model_is_registered_again(tmp_path):
    """An image the global model holds with no 3D point and a wrong pose (what global
    positioning leaves when bundle adjustment drops its observations) is taken out and
    registered again by the incremental mapper continuing from the model: back at its true
    pose; the others are unchanged."""
    from src.geometric.reconstruction import (_model_from_reconstruction,
                                              _reregister_weak_images, weakly_supported_images)

    truth = synthesize_cluster(seed=5)
    sizes = {name: truth.image_size for name in truth.names}
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    conf = ReconConf(mapper="global", camera_sharing="image", reregister_below_points=0)
    work = tmp_path / "work"
    models = reconstruct(image_dir, truth.names, truth.keypoints, truth.matches, work, conf,
                         image_sizes=sizes)
    assert len(models) == 1
    rec = pycolmap.Reconstruction(work / "models" / "0")
    weak = rec.find_image_with_name(truth.names[4])
    for index in weak.get_observation_point2D_idxs():
        rec.delete_observation(weak.image_id, int(index))
    rec.frame(weak.frame_id).rig_from_world = pycolmap.Rigid3d(
        pycolmap.Rotation3d(np.array([0.0, 0.0, 0.0, 1.0])), np.array([5.0, -3.0, 9.0]))
    assert weakly_supported_images(rec, 40) == [weak.image_id]
    wrong = _model_from_reconstruction(rec)
    with pytest.raises(AssertionError):
        assert_poses_match(truth, wrong, max_rotation_error_deg=1.0, max_center_error=0.02,
                           max_focal_error=0.05)

    repaired = _reregister_weak_images(rec, work / "database.db", image_dir, work,
                                       replace(conf, reregister_below_points=40), "test")
    model = _model_from_reconstruction(repaired)
    assert_poses_match(truth, model, max_rotation_error_deg=1.0, max_center_error=0.02,
                       max_focal_error=0.05)
    assert weakly_supported_images(repaired, 40) == []
    # A model that is mostly weak is left as it is.
    assert _reregister_weak_images(rec, work / "database.db", image_dir, work,
                                   replace(conf, reregister_below_points=10**6), "test") is rec


def test_a_weak_image_that_does_not_register_again_keeps_its_global_pose(tmp_path):
    from src.geometric.reconstruction import _model_from_reconstruction, _reregister_weak_images

    truth = synthesize_cluster(seed=6)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    conf = ReconConf(mapper="global", camera_sharing="image", reregister_below_points=0)
    work = tmp_path / "work"
    reconstruct(image_dir, truth.names, truth.keypoints, truth.matches, work, conf,
                image_sizes={name: truth.image_size for name in truth.names})
    rec = pycolmap.Reconstruction(work / "models" / "0")
    weak = rec.find_image_with_name(truth.names[2])
    for index in weak.get_observation_point2D_idxs():
        rec.delete_observation(weak.image_id, int(index))
    before = _model_from_reconstruction(rec)
    # No image can meet a million inliers: nothing registers again.
    kept = _reregister_weak_images(rec, work / "database.db", image_dir, work,
                                   replace(conf, reregister_below_points=40,
                                               reregister_min_inliers=10**6), "test")
    after = _model_from_reconstruction(kept)
    assert sorted(after.poses) == sorted(before.poses)
    assert len(after.observations[truth.names[2]]) == len(truth.keypoints[truth.names[2]])
    # The same camera layout up to the similarity the continuation's adjustment applied.
    names = sorted(before.poses)
    old = camera_centers(np.array([before.poses[n][0] for n in names]),
                         np.array([before.poses[n][1] for n in names]))
    new = camera_centers(np.array([after.poses[n][0] for n in names]),
                         np.array([after.poses[n][1] for n in names]))
    s, R, t = umeyama_similarity(old, new)
    spread = np.linalg.norm(new - new.mean(axis=0), axis=1).mean()
    assert np.linalg.norm(s * old @ R.T + t - new, axis=1).max() < 0.01 * spread
