"""Synthetic SfM truth fed straight into the reconstruction stage: cameras around a random
point cloud, the projections as keypoints and the shared points as matches (no descriptors, no
images), and a check of a model against it with named tolerances (as pycolmap's own tests
compare reconstructions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.geometry import camera_centers, look_at_rotation, rotation_angle_deg, umeyama_similarity
from src.geometric.reconstruction import OPENCV_TO_COLMAP_PIXEL, Model


@dataclass
class SyntheticCluster:
    """Cameras around a random point cloud, with the projections as keypoints and the
    shared points as matches (no descriptors, no images: straight into the SfM stage)."""

    names: list[str]
    K: np.ndarray  # (3, 3), OpenCV pixels (integer coordinates at pixel centres)
    R_cw: np.ndarray  # (N, 3, 3)
    t_cw: np.ndarray  # (N, 3)
    points: np.ndarray  # (P, 3) world coordinates
    keypoints: dict[str, np.ndarray]  # name -> (N_i, 2) float32, shuffled
    matches: dict[tuple[str, str], np.ndarray]  # (a, b) -> (K, 2) int32 keypoint indices
    image_size: tuple[int, int]  # (width, height) pixels
    focals: np.ndarray  # (N,) each camera's focal length, pixels (K's when no spread)


def synthesize_cluster(seed: int = 0, num_images: int = 10, num_points: int = 600,
                       width: int = 640, height: int = 480, focal: float = 600.0,
                       noise_px: float = 0.2, focal_spread: float = 0.0,
                       name_prefix: str = "synthetic", radial_k1: float = 0.0,
                       focal_factors: np.ndarray | None = None) -> SyntheticCluster:
    """Cameras on an arc 4 units from a point cloud in [-1, 1]^3, each looking near its
    centre; keypoints are the visible projections plus Gaussian noise of ``noise_px``. With
    ``focal_spread`` each camera's focal length is ``focal`` times a uniform factor in
    1 +- focal_spread (a zoom lens), else all share ``focal``; ``focal_factors`` (one per
    camera) sets them instead. ``radial_k1``: a lens
    distortion as COLMAP's SIMPLE_RADIAL model has it (normalised coordinates x become
    x (1 + k1 |x|^2); negative: a wide-angle lens's barrel)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1.0, 1.0, size=(num_points, 3))
    # COLMAP's principal point prior is the image centre in its own pixels (corners at
    # integers); in OpenCV pixels that is half a pixel less.
    K = np.array([[focal, 0.0, width / 2 - OPENCV_TO_COLMAP_PIXEL],
                  [0.0, focal, height / 2 - OPENCV_TO_COLMAP_PIXEL],
                  [0.0, 0.0, 1.0]])
    azimuths = np.linspace(0.0, np.radians(120), num_images) + rng.normal(0, 0.05, num_images)
    centers = np.stack([4.0 * np.cos(azimuths), 4.0 * np.sin(azimuths),
                        rng.uniform(0.5, 1.5, num_images)], axis=1)
    R_cw = np.array([look_at_rotation(c, rng.normal(0, 0.2, 3), roll_deg=rng.normal(0, 5))
                     for c in centers])
    t_cw = -np.einsum("nij,nj->ni", R_cw, centers)
    names = [f"{name_prefix}{i:02d}.png" for i in range(num_images)]
    focals = focal * rng.uniform(1 - focal_spread, 1 + focal_spread, num_images)
    if focal_factors is not None:  # given per camera (e.g. two lenses of one phone)
        focals = focal * np.asarray(focal_factors, dtype=np.float64)
    keypoints, point_ids = {}, {}
    for name, R, t, f in zip(names, R_cw, t_cw, focals):
        cam = points @ R.T + t
        uv = cam @ np.diag([f, f, 1.0]).T
        uv[:, :2] += K[:2, 2] * uv[:, 2:]
        uv = uv[:, :2] / uv[:, 2:]
        if radial_k1:
            normalized = (uv - K[:2, 2]) / f
            radial = 1.0 + radial_k1 * np.sum(normalized ** 2, axis=1, keepdims=True)
            uv = K[:2, 2] + f * normalized * radial
        visible = np.flatnonzero((cam[:, 2] > 0) & (uv[:, 0] > -0.5) & (uv[:, 0] < width - 0.5)
                                 & (uv[:, 1] > -0.5) & (uv[:, 1] < height - 0.5))
        ids = rng.permutation(visible)  # keypoint order unrelated to point ids
        noisy = uv[ids] + rng.normal(0.0, noise_px, (len(ids), 2))
        keypoints[name] = np.clip(noisy, -0.5, [width - 0.5, height - 0.5]).astype(np.float32)
        point_ids[name] = ids
    matches = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            _, in_a, in_b = np.intersect1d(point_ids[a], point_ids[b], return_indices=True)
            if len(in_a):
                matches[(a, b)] = np.stack([in_a, in_b], axis=1).astype(np.int32)
    return SyntheticCluster(names, K, R_cw, t_cw, points, keypoints, matches, (width, height),
                            focals)


def assert_poses_match(truth: SyntheticCluster, model: Model, max_rotation_error_deg: float,
                       max_center_error: float, max_focal_error: float) -> None:
    """Every camera registered, within the tolerances after a similarity alignment of the
    camera centres: rotation error in degrees, centre error as a fraction of the scene size
    (the diameter of the point cloud), focal length error as a fraction of the truth."""
    assert sorted(model.poses) == sorted(truth.names)
    R_est = np.array([model.poses[n][0] for n in truth.names])
    t_est = np.array([model.poses[n][1] for n in truth.names])
    C_true = camera_centers(truth.R_cw, truth.t_cw)
    s, R_align, t_align = umeyama_similarity(camera_centers(R_est, t_est), C_true)
    C_aligned = s * camera_centers(R_est, t_est) @ R_align.T + t_align
    scene_size = float(np.linalg.norm(truth.points.max(axis=0) - truth.points.min(axis=0)))
    center_error = np.linalg.norm(C_aligned - C_true, axis=1) / scene_size
    # x_cam = R_est X_est + t and X_est = R_align^T (X - t_align) / s: rotation R_est R_align^T
    rotation_error = rotation_angle_deg(R_est @ R_align.T, truth.R_cw)
    focal_error = np.array([abs(model.intrinsics[n][0, 0] / f - 1)
                            for n, f in zip(truth.names, truth.focals)])
    assert center_error.max() < max_center_error, center_error
    assert rotation_error.max() < max_rotation_error_deg, rotation_error
    assert focal_error.max() < max_focal_error, focal_error
