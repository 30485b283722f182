"""Shared or per-image cameras (src/geometric/camera_choice.py): the per-image focal fit on
synthetic truth (one lens, a zoom) mapped by pycolmap, the split reconstruction against the
original, and the rule that reads the fit."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from src.geometric.camera_choice import (PerImageFit, focal_drift, observation_errors,
                                         per_image_fit, prefer_shared_cameras, split_cameras)
from src.geometric.reconstruction import MODELS_DIR, ReconConf, reconstruct
from tests.synthetic_cluster import synthesize_cluster

RULE = dict(free_error_ratio=1.125, max_error_ratio=1.3, drift_factor=2.0)


def _shared_camera_models(tmp_path, focal_spread: float, seed: int = 3):
    """The synthetic scene mapped with one camera for all its images (global mapper): its
    truth and the pycolmap reconstructions as the mapper wrote them."""
    truth = synthesize_cluster(seed=seed, focal_spread=focal_spread, noise_px=0.3)
    sizes = {name: truth.image_size for name in truth.names}
    work = tmp_path / f"spread{focal_spread}"
    models = reconstruct(tmp_path, truth.names, truth.keypoints, truth.matches, work,
                         ReconConf(mapper="global", camera_sharing="size"), image_sizes=sizes)
    assert len(models) == 1 and models[0].num_registered == len(truth.names)
    return truth, [pycolmap.Reconstruction(work / MODELS_DIR / "0")]


@pytest.fixture(scope="module")
def one_lens(tmp_path_factory):
    return _shared_camera_models(tmp_path_factory.mktemp("one_lens"), 0.0)


@pytest.fixture(scope="module")
def zoom(tmp_path_factory):
    return _shared_camera_models(tmp_path_factory.mktemp("zoom"), 0.2)


def test_split_cameras_keeps_poses_points_and_errors_with_a_camera_per_image(one_lens):
    _, (original,) = one_lens
    split = split_cameras(original)
    assert original.num_cameras() == 1
    assert split.num_cameras() == split.num_reg_images() == original.num_reg_images()
    assert len({split.image(i).camera_id for i in split.reg_image_ids()}) == split.num_cameras()
    assert split.num_points3D() == original.num_points3D()
    assert split.compute_num_observations() == original.compute_num_observations()
    for image_id in original.reg_image_ids():
        before, after = original.image(image_id), split.image(image_id)
        assert after.name == before.name
        np.testing.assert_allclose(after.cam_from_world().matrix(),
                                   before.cam_from_world().matrix(), atol=1e-12)
        np.testing.assert_array_equal(split.camera(after.camera_id).params,
                                      original.camera(before.camera_id).params)
    # the same observations of the same points: the same reprojection error, recomputed
    split.update_point_3d_errors()
    original_copy = pycolmap.Reconstruction(original)
    original_copy.update_point_3d_errors()
    assert split.compute_mean_reprojection_error() == pytest.approx(
        original_copy.compute_mean_reprojection_error(), rel=1e-9)


def test_one_lens_fits_a_focal_length_per_image_no_better(one_lens):
    truth, reconstructions = one_lens
    before = {image.name: (image.cam_from_world().matrix(),
                           reconstructions[0].camera(image.camera_id).params.copy())
              for image in reconstructions[0].images.values()}
    fit, _ = per_image_fit(reconstructions, refine_extra_params=True,
                           refine_principal_point=False)
    assert fit.shared_error / fit.per_image_error < 1.05, fit[:2]
    np.testing.assert_allclose(list(fit.focals[0].values()), truth.focals[0], rtol=0.02)
    assert prefer_shared_cameras(fit, **RULE)[0]
    # the models the mapper wrote are not touched: poses and cameras as they were
    for image in reconstructions[0].images.values():
        pose, params = before[image.name]
        np.testing.assert_array_equal(image.cam_from_world().matrix(), pose)
        np.testing.assert_array_equal(reconstructions[0].camera(image.camera_id).params,
                                      params)


def test_a_zoom_fits_a_focal_length_per_image_clearly_better_and_finds_them(zoom):
    truth, reconstructions = zoom
    fit, _ = per_image_fit(reconstructions, refine_extra_params=True,
                           refine_principal_point=False)
    assert fit.shared_error / fit.per_image_error > 1.5, fit[:2]
    # each image's focal length as rendered, up to the scene's overall scale of focal
    # lengths that one global fit leaves (under 3 %)
    focals = np.array([fit.focals[0][name] for name in truth.names])
    np.testing.assert_allclose(focals / np.median(focals),
                               truth.focals / np.median(truth.focals), rtol=0.03)
    keep, why = prefer_shared_cameras(fit, **RULE)
    assert not keep and "per-image focal lengths plausible" in why


def test_focal_drift_counts_images_a_factor_off_their_models_median():
    steady = np.array([600.0, 620.0, 580.0, 640.0])
    assert focal_drift([steady], 2.0) == 0
    wild = np.array([600.0, 610.0, 620.0, 1e6, 250.0])
    assert focal_drift([wild], 2.0) == 2 and focal_drift([steady, wild], 2.0) == 2
    assert focal_drift([wild], 3.0) == 1
    # each model has its own median: two steady models of different lenses do not drift
    assert focal_drift([steady, np.array([2000.0, 2100.0])], 2.0) == 0
    assert focal_drift([np.array([600.0, np.nan, -5.0, 610.0])], 2.0) == 2
    assert focal_drift([np.array([])], 2.0) == 0


def test_prefer_shared_cameras_reads_the_error_ratio_and_the_drift():
    plausible = [{"a": 500.0, "b": 520.0, "c": 560.0}]
    drifting = [{"a": 500.0, "b": 520.0, "c": 1300.0}]
    assert prefer_shared_cameras(PerImageFit(0.56, 0.5, plausible), **RULE)[0]  # 1.12x
    keep, why = prefer_shared_cameras(PerImageFit(0.565, 0.5, plausible), **RULE)  # 1.13x
    assert not keep and "more than 1.125x, per-image focal lengths plausible" in why
    # drifting focal lengths are weaker evidence: up to 1.3x
    keep, why = prefer_shared_cameras(PerImageFit(0.6, 0.5, drifting), **RULE)
    assert keep and "1 per-image focal length(s) drift over 2x" in why
    keep, why = prefer_shared_cameras(PerImageFit(0.66, 0.5, drifting), **RULE)
    assert not keep and "more than 1.3x" in why
    # a fit that failed (no observations, a diverged adjustment) is no evidence
    for shared, own in ((np.nan, np.nan), (0.5, np.inf), (0.5, 0.0), (np.inf, 0.5)):
        keep, why = prefer_shared_cameras(PerImageFit(shared, own, plausible), **RULE)
        assert keep and why.startswith("no usable per-image fit")
    # a per-image fit that came out worse keeps the shared cameras
    assert prefer_shared_cameras(PerImageFit(0.5, 7e151, plausible), **RULE)[0]


def test_observation_errors_are_each_observation_s_and_inf_behind_the_camera(one_lens):
    _, (original,) = one_lens
    errors = observation_errors(original)
    assert len(errors) == original.compute_num_observations()
    # an independent reference: pycolmap's own per-point errors, each its track's mean
    copy = pycolmap.Reconstruction(original)
    copy.update_point_3d_errors()
    means = np.array([p.error for p in copy.points3D.values()])
    tracks = np.array([p.track.length() for p in copy.points3D.values()])
    assert np.dot(means, tracks) / tracks.sum() == pytest.approx(errors.mean(), rel=1e-6)
    # a camera moved behind the scene sees its points behind it: no projection, inf
    image_id = next(iter(copy.reg_image_ids()))
    image = copy.image(image_id)
    flipped = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 1.0, 0.0, 0.0])),
                               image.cam_from_world().translation)
    copy.frame(image.frame_id).set_cam_from_world(image.camera_id, flipped)
    assert np.isinf(observation_errors(copy)).sum() >= 1
