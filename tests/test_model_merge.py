"""Joining the SfM models of one scene (src.geometric.model_merge): real pycolmap models of two
halves of a synthetic scene, mapped apart in unrelated frames, come back as one model with the
true poses; a model of another scene linked by chance matches is left apart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from config import get_config
from src.demo_data import DemoSpec, generate_demo_dataset
from src.evaluation import score_frames
from src.geometry import camera_centers
from src.geometric.model_merge import (MergeConf, Similarity, estimate_similarity,
                                       merge_models, point_pairs, transform_pose)
from src.geometric.pipeline import GeometricConf, run_geometric
from src.geometric.reconstruction import ReconConf, reconstruct
from src.submission import build_submission, list_test_images, read_submission
from tests.synthetic_cluster import assert_poses_match, synthesize_cluster


def _map(truth, names, tmp_path, label):
    """SfM of the images ``names`` of ``truth`` alone (only their own matches)."""
    chosen = set(names)
    matches = {pair: m for pair, m in truth.matches.items()
               if pair[0] in chosen and pair[1] in chosen}
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    models = reconstruct(image_dir, names, {n: truth.keypoints[n] for n in names}, matches,
                         tmp_path / label, ReconConf(mapper="incremental"),
                         image_sizes={n: truth.image_size for n in names})
    assert len(models) == 1 and sorted(models[0].poses) == sorted(names)
    return models[0]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """A 10-view synthetic scene and real pycolmap models of views 0-5 and 6-9."""
    truth = synthesize_cluster(seed=3)
    tmp_path = tmp_path_factory.mktemp("halves")
    first = _map(truth, truth.names[:6], tmp_path, "first")
    second = _map(truth, truth.names[6:], tmp_path, "second")
    return truth, first, second


def test_transform_pose_agrees_with_pycolmap_sim3d():
    rng = np.random.default_rng(0)
    R_cw = Rotation.random(random_state=1).as_matrix()
    t_cw = rng.normal(size=3)
    R_ab = Rotation.random(random_state=2).as_matrix()
    similarity = Similarity(scale=2.5, R_ab=R_ab, t_ab=rng.normal(size=3))
    R_new, t_new = transform_pose(R_cw, t_cw, similarity)
    reference = pycolmap.Sim3d(2.5, pycolmap.Rotation3d(R_ab), similarity.t_ab) \
        .transform_camera_world(pycolmap.Rigid3d(pycolmap.Rotation3d(R_cw), t_cw))
    np.testing.assert_allclose(R_new, reference.rotation.matrix(), atol=1e-12)
    np.testing.assert_allclose(t_new, reference.translation, atol=1e-12)
    # Centres map as points do.
    np.testing.assert_allclose(camera_centers(R_new[None], t_new[None])[0],
                               similarity.apply(camera_centers(R_cw[None], t_cw[None]))[0],
                               atol=1e-12)


def test_estimate_similarity_recovers_a_known_one_despite_outliers():
    rng = np.random.default_rng(5)
    points_b = rng.normal(size=(200, 3))
    truth = Similarity(scale=0.3, R_ab=Rotation.random(random_state=3).as_matrix(),
                       t_ab=np.array([1.0, -2.0, 0.5]))
    points_a = truth.apply(points_b)
    points_a[:60] = rng.normal(size=(60, 3))  # 30 % wrong pairs
    found, agree = estimate_similarity(points_a, points_b, tolerance=0.01, seed=0)
    assert found is not None
    np.testing.assert_allclose(found.scale, truth.scale, rtol=1e-9)
    np.testing.assert_allclose(found.R_ab, truth.R_ab, atol=1e-9)
    np.testing.assert_allclose(found.t_ab, truth.t_ab, atol=1e-9)
    assert not agree[:60].any() and agree[60:].all()


def test_model_observations_index_the_points_the_keypoints_see(halves):
    truth, first, _ = halves
    for name in first.poses:
        observed = first.observations[name]
        assert observed.shape == (len(truth.keypoints[name]),)
        seen = np.flatnonzero(observed >= 0)
        assert len(seen) > 100
        R_cw, t_cw = first.poses[name]
        cam = first.points3D[observed[seen]] @ R_cw.T + t_cw
        uv = cam @ first.intrinsics[name].T
        reprojection = np.linalg.norm(uv[:, :2] / uv[:, 2:] - truth.keypoints[name][seen],
                                      axis=1)
        assert np.median(reprojection) < 1.0  # pixels (0.2 px keypoint noise)


def test_two_halves_mapped_apart_join_into_the_true_scene(halves):
    truth, first, second = halves
    pairs, _ = point_pairs(first, second, truth.matches)
    assert len(pairs) > 50
    models, merges = merge_models([first, second], truth.matches)
    assert len(models) == 1 and len(merges) == 1
    assert merges[0].source == 1 and merges[0].images_added == 4
    assert merges[0].agreeing_points >= 0.9 * merges[0].point_pairs
    merged = models[0]
    assert merged.num_points3D == first.num_points3D + second.num_points3D
    assert set(merged.observations) == set(truth.names)
    assert merged.cameras == {**second.cameras, **first.cameras}  # the larger model's stand
    # The joined images' observations index the joined points: they reproject onto their
    # keypoints.
    for name in truth.names[6:]:
        observed = merged.observations[name]
        seen = np.flatnonzero(observed >= 0)
        R_cw, t_cw = merged.poses[name]
        uv = (merged.points3D[observed[seen]] @ R_cw.T + t_cw) @ merged.intrinsics[name].T
        error = np.linalg.norm(uv[:, :2] / uv[:, 2:] - truth.keypoints[name][seen], axis=1)
        assert len(seen) > 100 and np.median(error) < 1.0
    # Within 1 % of the scene's size: each half was adjusted alone, then joined rigidly.
    assert_poses_match(truth, merged, max_rotation_error_deg=0.5, max_center_error=0.01,
                       max_focal_error=0.02)


def test_a_model_of_another_scene_is_not_joined(halves, tmp_path):
    truth, first, _ = halves
    other_truth = synthesize_cluster(seed=8, name_prefix="other")
    other = _map(other_truth, other_truth.names[:5], tmp_path, "other")
    # Chance matches: every keypoint of one image of each model linked at random.
    rng = np.random.default_rng(0)
    a, b = truth.names[0], other_truth.names[0]
    count = min(len(truth.keypoints[a]), len(other_truth.keypoints[b]))
    chance = {(a, b): np.stack([rng.permutation(len(truth.keypoints[a]))[:count],
                                rng.permutation(len(other_truth.keypoints[b]))[:count]], axis=1)}
    pairs, _ = point_pairs(first, other, chance)
    assert len(pairs) >= MergeConf().min_agreeing_points  # the similarity test decides
    models, merges = merge_models([first, other], chance)
    assert merges == [] and len(models) == 2
    assert models[0] is first and models[1] is other


def test_merging_can_be_switched_off_and_conf_is_checked(halves):
    truth, first, second = halves
    models, merges = merge_models([first, second], truth.matches, MergeConf(enabled=False))
    assert merges == [] and len(models) == 2
    with pytest.raises(ValueError, match="min_agreeing_points"):
        MergeConf(min_agreeing_points=2)
    with pytest.raises(ValueError, match="point_tolerance"):
        MergeConf(point_tolerance=0.0)


@pytest.mark.slow
def test_the_pipeline_joins_a_demo_scene_the_incremental_mapper_split(tmp_path):
    """On the default demo data (seed 40) the incremental mapper maps one scene of
    demo_test_a as 7 + 5 images; merged, it is one cluster with more cameras right. Without
    the affine views (options.AFFINE_TILT): with them the larger model already holds all 10
    images (10 + 5), joined with no mAA to gain. The merge, not the features, is under
    test."""
    data_dir = generate_demo_dataset(tmp_path / "data", DemoSpec(seed=40))
    images = list_test_images(data_dir)
    images = images[images["dataset"] == "demo_test_a"].reset_index(drop=True)
    conf = GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric", seed=40,
                                                mapper="incremental", affine_tilt=0))
    apart = replace(conf, merge=replace(conf.merge, enabled=False))
    joined_predictions, _, joined = run_geometric(images, data_dir / "test", conf,
                                                  tmp_path / "joined")
    apart_predictions, _, split = run_geometric(images, data_dir / "test", apart,
                                                tmp_path / "apart")
    merged_rows = joined[joined["merged"] != ""]
    assert len(merged_rows) >= 1, joined
    assert (split["merged"] == "").all()
    for scene in merged_rows["graph_scene"]:
        before = split.set_index("graph_scene").loc[scene]
        after = joined.set_index("graph_scene").loc[scene]
        assert after["models"] < before["models"]
        assert after["registered"] == before["registered"]  # the same images, fewer clusters
    labels = read_submission(data_dir / "test_labels.csv")
    labels = labels[labels["dataset"] == "demo_test_a"]
    thresholds = read_submission(data_dir / "test_thresholds.csv")
    score_joined = score_frames(build_submission(joined_predictions), labels, thresholds)
    score_apart = score_frames(build_submission(apart_predictions), labels, thresholds)
    assert score_joined.mAA > score_apart.mAA


def test_models_sharing_an_image_join_and_the_larger_models_pose_stands(tmp_path):
    truth = synthesize_cluster(seed=3)
    first = _map(truth, truth.names[:6], tmp_path, "first")
    second = _map(truth, truth.names[5:], tmp_path, "second")
    shared = truth.names[5]
    # The shared image alone links points of both models: no match between them needed.
    pairs, _ = point_pairs(first, second, {})
    assert len(pairs) >= MergeConf().min_agreeing_points
    models, merges = merge_models([first, second], {})
    assert len(models) == 1 and merges[0].images_added == 4
    np.testing.assert_array_equal(models[0].poses[shared][0], first.poses[shared][0])
    np.testing.assert_array_equal(models[0].poses[shared][1], first.poses[shared][1])
    assert_poses_match(truth, models[0], max_rotation_error_deg=0.5, max_center_error=0.01,
                       max_focal_error=0.02)
