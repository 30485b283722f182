"""Geometry against SciPy, round-trips and a second formula."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from src import geometry as g

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
quat_like = arrays(np.float64, 4, elements=st.floats(-1, 1, allow_nan=False)).filter(
    lambda q: np.linalg.norm(q) > 1e-3)
vec3 = arrays(np.float64, 3, elements=finite)


@settings(max_examples=200, deadline=None)
@given(quat_like)
def test_quaternion_to_rotation_matches_scipy(q):
    np.testing.assert_allclose(g.quat_xyzw_to_rotation(q), Rotation.from_quat(q).as_matrix(),
                               atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(quat_like)
def test_rotation_quaternion_round_trip(q):
    R = Rotation.from_quat(q).as_matrix()
    q_back = g.rotation_to_quat_xyzw(R)
    assert q_back[3] >= 0 and np.linalg.norm(q_back) == pytest.approx(1.0)
    np.testing.assert_allclose(g.quat_xyzw_to_rotation(q_back), R, atol=1e-12)
    expected = Rotation.from_matrix(R).as_quat()
    expected = expected if expected[3] >= 0 else -expected
    # w = 0 leaves a sign choice; compare as rotations there.
    if abs(expected[3]) > 1e-9:
        np.testing.assert_allclose(q_back, expected, atol=1e-9)


def test_rotation_to_quat_handles_180_degree_turns_and_batches():
    angles = np.array([[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [np.pi / 2, 0, np.pi]])
    R = Rotation.from_euler("xyz", angles).as_matrix()
    q = g.rotation_to_quat_xyzw(R.reshape(2, 2, 3, 3))
    assert q.shape == (2, 2, 4)
    np.testing.assert_allclose(g.quat_xyzw_to_rotation(q).reshape(4, 3, 3), R, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(quat_like, vec3)
def test_camera_centre_round_trip_and_projection(q, center):
    R = Rotation.from_quat(q).as_matrix()
    t = g.translations_from_centers(R, center)
    np.testing.assert_allclose(g.camera_centers(R, t), center, atol=1e-9 * (1 + np.abs(center).max()))
    # The centre maps to the camera origin: R C + t = 0.
    np.testing.assert_allclose(R @ center + t, 0.0, atol=1e-9 * (1 + np.abs(center).max()))


@settings(max_examples=100, deadline=None)
@given(quat_like, quat_like)
def test_angles_agree_between_matrix_and_quaternion(q1, q2):
    R1, R2 = Rotation.from_quat(q1), Rotation.from_quat(q2)
    expected = np.degrees((R1.inv() * R2).magnitude())
    assert g.rotation_angle_deg(R1.as_matrix(), R2.as_matrix()) == pytest.approx(expected, abs=1e-5)
    assert g.quat_angle_deg(q1, -q2) == pytest.approx(expected, abs=1e-5)


def test_is_rotation_and_nearest_rotation():
    R = Rotation.random(random_state=1).as_matrix()
    assert g.is_rotation(R)
    assert not g.is_rotation(-R)  # det -1
    assert not g.is_rotation(R * 1.1)
    assert not g.is_rotation(np.full((3, 3), np.nan))
    noisy = R + np.random.default_rng(0).normal(scale=1e-2, size=(3, 3))
    fixed = g.nearest_rotation(noisy)
    assert g.is_rotation(fixed, atol=1e-10)
    assert g.rotation_angle_deg(fixed, R) < 2.0


def test_look_at_points_the_optical_axis_at_the_target():
    center, target = np.array([4.0, -3.0, 2.0]), np.array([0.5, 1.0, 0.0])
    R = g.look_at_rotation(center, target, roll_deg=17.0)
    assert g.is_rotation(R)
    t = g.translations_from_centers(R, center)
    x_cam = R @ target + t
    assert x_cam[2] > 0
    np.testing.assert_allclose(x_cam[:2], 0.0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(quat_like, st.floats(0.1, 10), vec3)
def test_similarity_recovers_a_known_transform_two_ways(q, scale, shift):
    rng = np.random.default_rng(0)
    src = rng.normal(size=(6, 3))
    R = Rotation.from_quat(q).as_matrix()
    dst = g.apply_similarity(scale, R, shift, src)
    for solver in (g.umeyama_similarity, g.horn_similarity):
        s_est, R_est, t_est = solver(src, dst)
        assert s_est == pytest.approx(scale, rel=1e-8)
        np.testing.assert_allclose(R_est, R, atol=1e-7)
        np.testing.assert_allclose(g.apply_similarity(s_est, R_est, t_est, src), dst,
                                   atol=1e-6 * (1 + np.abs(dst).max()))


def test_horn_and_svd_agree_on_noisy_points():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    dst = src @ Rotation.random(random_state=2).as_matrix().T * 2 + 1 + rng.normal(scale=0.05, size=(20, 3))
    s1, R1, t1 = g.umeyama_similarity(src, dst)
    s2, R2, t2 = g.horn_similarity(src, dst)
    assert s1 == pytest.approx(s2)
    np.testing.assert_allclose(R1, R2, atol=1e-9)
    np.testing.assert_allclose(t1, t2, atol=1e-9)


def test_batched_horn_rotations_match_scipy_align_vectors():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 8, 3))
    a -= a.mean(axis=1, keepdims=True)
    truth = Rotation.random(5, random_state=4).as_matrix()
    b = np.einsum("bij,bnj->bni", truth, a) + rng.normal(scale=0.01, size=a.shape)
    b -= b.mean(axis=1, keepdims=True)
    R = g.horn_rotations(a, b)
    for k in range(5):
        reference, _ = Rotation.align_vectors(b[k], a[k])  # b ~ R a, least squares
        np.testing.assert_allclose(R[k], reference.as_matrix(), atol=1e-8)
    assert np.allclose(np.linalg.det(R), 1.0)


def _posed_camera(rng, target):
    """A camera 4-6 units from ``target`` looking at it: (K, R_cw, t_cw)."""
    center = target + rng.normal(size=3) / np.sqrt(3) * 5
    R_cw = g.look_at_rotation(center, target)
    K = np.array([[rng.uniform(400, 900), 0, rng.uniform(300, 340)],
                  [0, rng.uniform(400, 900), rng.uniform(220, 260)], [0, 0, 1]])
    return K, R_cw, g.translations_from_centers(R_cw, center)


def _project(K, R_cw, t_cw, points):
    cam = points @ R_cw.T + t_cw
    return (cam[:, :2] / cam[:, 2:]) @ K[:2, :2].T + K[:2, 2]


def test_fundamental_from_poses_holds_projected_points_and_matches_pycolmap():
    import pycolmap
    rng = np.random.default_rng(3)
    target = np.zeros(3)
    cam_a, cam_b = _posed_camera(rng, target), _posed_camera(rng, target)
    points = rng.normal(size=(50, 3))
    x_a, x_b = _project(*cam_a, points), _project(*cam_b, points)
    F = g.fundamental_from_poses(*cam_a, *cam_b)
    assert np.allclose(g.sampson_distances(F, x_a, x_b), 0, atol=1e-6)
    # The same F from pycolmap's essential matrix (cam b from cam a), up to scale.
    R_ba = cam_b[1] @ cam_a[1].T
    b_from_a = pycolmap.Rigid3d(pycolmap.Rotation3d(R_ba), cam_b[2] - R_ba @ cam_a[2])
    E = pycolmap.essential_matrix_from_pose(b_from_a)
    F_ref = np.linalg.inv(cam_b[0]).T @ E @ np.linalg.inv(cam_a[0])
    assert np.allclose(F / np.linalg.norm(F), np.sign(np.sum(F * F_ref)) * F_ref
                       / np.linalg.norm(F_ref), atol=1e-9)


def test_sampson_distances_match_opencv_and_pycolmap():
    import cv2
    import pycolmap
    rng = np.random.default_rng(5)
    cam_a, cam_b = _posed_camera(rng, np.zeros(3)), _posed_camera(rng, np.zeros(3))
    points = rng.normal(size=(40, 3))
    x_a = _project(*cam_a, points) + rng.normal(scale=3, size=(40, 2))
    x_b = _project(*cam_b, points) + rng.normal(scale=3, size=(40, 2))
    F = g.fundamental_from_poses(*cam_a, *cam_b)
    ours = g.sampson_distances(F, x_a, x_b)
    assert ours.shape == (40,) and np.all(ours > 0)
    squared = np.array(pycolmap.compute_squared_sampson_error(x_a, x_b, F))
    assert np.allclose(ours, np.sqrt(squared), rtol=1e-6)
    opencv = [cv2.sampsonDistance(np.r_[p, 1.0][:, None], np.r_[q, 1.0][:, None], F)
              for p, q in zip(x_a, x_b)]
    assert np.allclose(ours ** 2, opencv, rtol=1e-6)
    # Moving one point along its epipolar line keeps it on the geometry.
    line = F @ np.r_[x_a[0], 1.0]
    on_line = x_b[0] - line[:2] * (line @ np.r_[x_b[0], 1.0]) / (line[:2] @ line[:2])
    along = on_line + 25 * np.array([-line[1], line[0]]) / np.hypot(*line[:2])
    assert g.sampson_distances(F, x_a[:1], along[None])[0] < 1e-6
