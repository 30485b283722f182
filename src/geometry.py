"""Pure camera geometry: rotations, quaternions, camera centres, similarity alignment,
epipolar geometry.

Conventions, used everywhere in the project:
- Poses are world-to-camera: ``x_cam = R_cw @ X_world + t_cw``.
- The camera centre in world coordinates is ``C = -R_cw.T @ t_cw``.
- Quaternions are stored **x, y, z, w** (scalar last), the order of SciPy and
  tensorflow-graphics, and are canonicalised to ``w >= 0`` (q and -q are the same rotation).

All functions take NumPy arrays, work on a single item or a leading batch axis, and hold no
state; they are tested against SciPy and against each other.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "rotation_to_quat_xyzw",
    "quat_xyzw_to_rotation",
    "canonical_quat",
    "camera_centers",
    "translations_from_centers",
    "rotation_angle_deg",
    "quat_angle_deg",
    "is_rotation",
    "nearest_rotation",
    "look_at_rotation",
    "umeyama_similarity",
    "horn_similarity",
    "horn_rotations",
    "apply_similarity",
    "fundamental_from_poses",
    "sampson_distances",
]


def canonical_quat(quat_xyzw: np.ndarray) -> np.ndarray:
    """Normalise quaternions (..., 4) to unit length with w >= 0."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def rotation_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), x y z w, w >= 0.

    Shepperd's method: pick the largest of w, x, y, z to divide by, which keeps the result
    accurate for rotations of any angle (including 180 degrees).
    """
    R = np.asarray(R, dtype=np.float64)
    batch_shape = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    trace = m00 + m11 + m22
    candidates = np.stack([trace, m00, m11, m22], axis=1)
    pick = np.argmax(candidates, axis=1)
    q = np.empty((R.shape[0], 4))
    for k in range(4):
        sel = pick == k
        if not np.any(sel):
            continue
        r = R[sel]
        if k == 0:  # w largest
            s = 2.0 * np.sqrt(1.0 + trace[sel])
            q[sel] = np.stack(
                [(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                 (r[:, 1, 0] - r[:, 0, 1]) / s, 0.25 * s], axis=1)
        elif k == 1:  # x largest
            s = 2.0 * np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2])
            q[sel] = np.stack(
                [0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                 (r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 2, 1] - r[:, 1, 2]) / s], axis=1)
        elif k == 2:  # y largest
            s = 2.0 * np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2])
            q[sel] = np.stack(
                [(r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s,
                 (r[:, 1, 2] + r[:, 2, 1]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s], axis=1)
        else:  # z largest
            s = 2.0 * np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1])
            q[sel] = np.stack(
                [(r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s,
                 0.25 * s, (r[:, 1, 0] - r[:, 0, 1]) / s], axis=1)
    return canonical_quat(q).reshape(*batch_shape, 4)


def quat_xyzw_to_rotation(quat_xyzw: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4), x y z w, any non-zero norm -> rotation matrices (..., 3, 3)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def camera_centers(R_cw: np.ndarray, t_cw: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates, C = -R^T t. R_cw (..., 3, 3), t_cw (..., 3)."""
    R_cw = np.asarray(R_cw, dtype=np.float64)
    t_cw = np.asarray(t_cw, dtype=np.float64)
    return -np.einsum("...ji,...j->...i", R_cw, t_cw)


def translations_from_centers(R_cw: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Inverse of :func:`camera_centers`: t = -R C."""
    return -np.einsum("...ij,...j->...i", np.asarray(R_cw, float), np.asarray(centers, float))


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the relative rotation R_a^T R_b, (..., 3, 3) -> (...)."""
    R_rel = np.einsum("...ji,...jk->...ik", np.asarray(R_a, float), np.asarray(R_b, float))
    cos = (np.trace(R_rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def quat_angle_deg(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Angle in degrees between the rotations of two quaternion sets (..., 4); sign-blind."""
    q_a = canonical_quat(q_a)
    q_b = canonical_quat(q_b)
    dot = np.abs(np.sum(q_a * q_b, axis=-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, -1.0, 1.0)))


def is_rotation(R: np.ndarray, atol: float = 1e-4) -> bool:
    """True when R (3, 3) is finite, orthonormal and has determinant +1 within atol."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        return False
    return bool(np.allclose(R.T @ R, np.eye(3), atol=atol) and abs(np.linalg.det(R) - 1) < atol)


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """Closest rotation (Frobenius norm) to each matrix in (..., 3, 3), by SVD."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.zeros(U.shape)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return U @ D @ Vt


def look_at_rotation(center: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0),
                     roll_deg: float = 0.0) -> np.ndarray:
    """World-to-camera rotation R_cw of a camera at ``center`` looking at ``target``.

    OpenCV camera frame: +z forward, +x right, +y down in the image. ``roll_deg`` turns the
    camera about its optical axis.
    """
    center = np.asarray(center, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`: any right vector will do
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R_cw = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    a = np.radians(roll_deg)
    roll = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return roll @ R_cw


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t (Umeyama / Kabsch with scale).

    src, dst: (N, 3), N >= 3. Returns (s, R (3, 3), t (3,)). The scale is the ratio of RMS
    deviations from the centroids, the convention of the IMC metric.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    U, _, Vt = np.linalg.svd(b.T @ a)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    s = float(np.sqrt(np.sum(b * b) / np.sum(a * a)))
    t = mu_d - s * R @ mu_s
    return s, R, t


def horn_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity dst ~ s R src + t with the rotation from Horn's unit-quaternion method.

    Same contract as :func:`umeyama_similarity`; an independent formula used as a check and by
    the IMC metric on minimal (3-point) samples.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    R = horn_rotations(a[None], b[None])[0]
    s = float(np.sqrt(np.sum(b * b) / np.sum(a * a)))
    return s, R, mu_d - s * R @ mu_s


def horn_rotations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched Horn rotation: for centred point sets a, b (B, N, 3), R (B, 3, 3) with b ~ R a
    in the least-squares sense (Horn 1987, unit quaternions). Vectorised over B, which the IMC
    scorer needs for its thousands of 3-camera samples."""
    S = np.einsum("bni,bnj->bij", a, b)  # S[i, j] = sum a_i b_j
    sxx, sxy, sxz = S[:, 0, 0], S[:, 0, 1], S[:, 0, 2]
    syx, syy, syz = S[:, 1, 0], S[:, 1, 1], S[:, 1, 2]
    szx, szy, szz = S[:, 2, 0], S[:, 2, 1], S[:, 2, 2]
    N = np.empty((a.shape[0], 4, 4))
    # Horn (1987), quaternion order w x y z.
    N[:, 0, 0] = sxx + syy + szz
    N[:, 0, 1] = N[:, 1, 0] = syz - szy
    N[:, 0, 2] = N[:, 2, 0] = szx - sxz
    N[:, 0, 3] = N[:, 3, 0] = sxy - syx
    N[:, 1, 1] = sxx - syy - szz
    N[:, 1, 2] = N[:, 2, 1] = sxy + syx
    N[:, 1, 3] = N[:, 3, 1] = szx + sxz
    N[:, 2, 2] = -sxx + syy - szz
    N[:, 2, 3] = N[:, 3, 2] = syz + szy
    N[:, 3, 3] = -sxx - syy + szz
    w, V = np.linalg.eigh(N)
    q_wxyz = V[np.arange(a.shape[0]), :, np.argmax(w, axis=1)]
    return quat_xyzw_to_rotation(q_wxyz[:, [1, 2, 3, 0]])


def apply_similarity(s: float, R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply x -> s R x + t to points (N, 3)."""
    return s * np.asarray(points, float) @ np.asarray(R, float).T + np.asarray(t, float)


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    """[v]_x, the matrix of v x . for v (3,)."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def fundamental_from_poses(K_a: np.ndarray, R_a_cw: np.ndarray, t_a_cw: np.ndarray,
                           K_b: np.ndarray, R_b_cw: np.ndarray, t_b_cw: np.ndarray
                           ) -> np.ndarray:
    """Fundamental matrix (3, 3) of two posed cameras, ``x_b^T F x_a = 0`` for the pixels
    x_a, x_b (homogeneous) of one 3D point. K (3, 3) intrinsics, pixels; R_cw, t_cw the
    world-to-camera poses. F = K_b^-T [t]_x R K_a^-1 with (R, t) camera b from camera a.
    Two cameras at one centre (t = 0) have no epipolar geometry: F is zero and
    :func:`sampson_distances` gives inf for every pair of points."""
    R_a_cw, R_b_cw = np.asarray(R_a_cw, float), np.asarray(R_b_cw, float)
    R_ba = R_b_cw @ R_a_cw.T
    t_ba = np.asarray(t_b_cw, float) - R_ba @ np.asarray(t_a_cw, float)
    essential = _cross_matrix(t_ba) @ R_ba
    return np.linalg.inv(np.asarray(K_b, float)).T @ essential @ np.linalg.inv(
        np.asarray(K_a, float))


def sampson_distances(F: np.ndarray, points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Sampson distances (N,), pixels, of point pairs (N, 2) to the epipolar geometry
    ``x_b^T F x_a = 0``: the first-order distance of (x_a, x_b) to the nearest exact pair."""
    F = np.asarray(F, float)
    ones = np.ones((len(points_a), 1))
    x_a = np.hstack([np.asarray(points_a, float).reshape(-1, 2), ones])
    x_b = np.hstack([np.asarray(points_b, float).reshape(-1, 2), ones])
    F_xa = x_a @ F.T  # epipolar lines in image b
    Ft_xb = x_b @ F  # ... in image a
    algebraic = np.sum(x_b * F_xa, axis=1)
    gradient2 = F_xa[:, 0] ** 2 + F_xa[:, 1] ** 2 + Ft_xb[:, 0] ** 2 + Ft_xb[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gradient2 > 0, np.abs(algebraic) / np.sqrt(gradient2), np.inf)
