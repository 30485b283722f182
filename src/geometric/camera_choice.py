"""Shared or per-image cameras: whether the photos of a scene came through one lens.

No intrinsics are known (an IMC image brings no EXIF), so a scene is first mapped with one
camera per image size, as plain COLMAP treats photos without EXIF: fewer parameters keep the
focal lengths of weak geometry from drifting apart (realdev2's repetitive fruit mat: mAA
43.75 -> 78.1 against per-image cameras). Photos of several focal lengths (a zoom, a phone's
second lens at the same resolution, the demo's renders at 0.9-1.2x) do not fit one camera,
and need a camera each.

The question is asked of the shared-camera models themselves, not of a second mapping:
each model is bundle-adjusted once as it is (its shared cameras, the pipeline's refinement
options) and once with a camera per image, every image's focal length free and the rest of
its intrinsics held at the shared values (:func:`per_image_fit`). Starting from the same
poses and points, the per-image fit can only fit better; how much better says whether the
focal lengths differ. Plausible per-image focal lengths that fit clearly better (mean
reprojection error ratio over ``free_error_ratio``) say they do; drifting ones (some image's
more than ``drift_factor`` from its model's median) overfit weak geometry and need the
larger ``max_error_ratio`` (:func:`prefer_shared_cameras`).

Measured ratios (shared / per image, SIFT, global mapper, seeds 40-42, every scene of
realdev, realdev2 and the demo data): real photos from one camera 1.000-1.032 (realdev),
1.005-1.102 (realdev2, the high ones on the fruit mat); the demo renders 1.186-1.818. The
second mapping this replaces gave ratios of the same spread (one camera 0.43-1.13, the demo
1.20-1.76) at the cost of a whole mapping per scene.

Everything that touches pycolmap here works on copies; the models the mapper wrote are not
changed.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import numpy as np
import pycolmap

__all__ = ["PerImageFit", "per_image_fit", "prefer_shared_cameras", "split_cameras",
           "focal_drift"]


class PerImageFit(NamedTuple):
    """The two bundle adjustments of a scene's shared-camera models (:func:`per_image_fit`).

    shared_error, per_image_error: mean reprojection error in pixels over all models,
    weighted by their observations (nan where no model has observations);
    focals: per model, image name -> the focal length (pixels) the second adjustment found.
    """

    shared_error: float
    per_image_error: float
    focals: list[dict[str, float]]


def split_cameras(reconstruction: pycolmap.Reconstruction) -> pycolmap.Reconstruction:
    """A copy of ``reconstruction``'s registered images, 3D points and tracks in which every
    image has a camera (and a trivial rig and frame) of its own, a copy of the one it had,
    with its id; poses, keypoints and observations unchanged."""
    split = pycolmap.Reconstruction()
    for image_id in sorted(reconstruction.reg_image_ids()):
        image = reconstruction.image(image_id)
        camera = copy.copy(reconstruction.camera(image.camera_id))
        camera.camera_id = image_id
        split.add_camera_with_trivial_rig(camera)
        keypoints = np.array([point.xy for point in image.points2D],
                             dtype=np.float64).reshape(-1, 2)
        split.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, keypoints=keypoints, camera_id=image_id,
                           image_id=image_id),
            image.cam_from_world())
    for point in reconstruction.points3D.values():
        split.add_point3D(point.xyz, point.track)
    return split


def _adjust(reconstruction: pycolmap.Reconstruction, refine_extra_params: bool,
            refine_principal_point: bool, num_threads: int) -> None:
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = True
    options.refine_principal_point = refine_principal_point
    options.refine_extra_params = refine_extra_params
    options.ceres.solver_options.num_threads = num_threads
    pycolmap.bundle_adjustment(reconstruction, options)
    reconstruction.update_point_3d_errors()


def per_image_fit(reconstructions: Sequence[pycolmap.Reconstruction], *,
                  refine_extra_params: bool, refine_principal_point: bool,
                  num_threads: int = 1) -> PerImageFit:
    """Bundle-adjust copies of ``reconstructions`` (one scene's shared-camera models) with
    their shared cameras (refining focal length, and distortion and principal point as
    asked), then with a camera per image from there, refining only each image's focal
    length; both errors and the per-image focal lengths. One thread by default: Ceres is
    then reproducible."""
    weights, shared_errors, per_image_errors, focals = [], [], [], []
    for original in reconstructions:
        shared = pycolmap.Reconstruction(original)
        _adjust(shared, refine_extra_params, refine_principal_point, num_threads)
        per_image = split_cameras(shared)
        _adjust(per_image, False, False, num_threads)
        weights.append(shared.compute_num_observations())
        shared_errors.append(shared.compute_mean_reprojection_error())
        per_image_errors.append(per_image.compute_mean_reprojection_error())
        focals.append({image.name: per_image.camera(image.camera_id).mean_focal_length()
                       for image in per_image.images.values()})
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() == 0:
        return PerImageFit(float("nan"), float("nan"), focals)
    return PerImageFit(float(np.dot(w, shared_errors) / w.sum()),
                       float(np.dot(w, per_image_errors) / w.sum()), focals)


def focal_drift(focals: Sequence[Sequence[float]], factor: float) -> int:
    """How many images have a focal length more than ``factor`` times above or below the
    median of their model's (``focals``: one array per model); a non-finite or non-positive
    one drifts too."""
    count = 0
    for model_focals in focals:
        f = np.asarray(model_focals, dtype=np.float64)
        if not len(f):
            continue
        bad = ~np.isfinite(f) | (f <= 0)
        median = np.median(f[~bad]) if np.any(~bad) else np.nan
        count += int(np.sum(bad | (f > factor * median) | (f < median / factor)))
    return count


def prefer_shared_cameras(fit: PerImageFit, *, free_error_ratio: float,
                          max_error_ratio: float, drift_factor: float) -> tuple[bool, str]:
    """Whether the shared cameras are kept, and why (for the log): unless the per-image
    focal lengths fit more than ``free_error_ratio`` times better (``max_error_ratio``
    where they drift, :func:`focal_drift`). A fit without a finite error is no evidence:
    shared kept."""
    shared, own = fit.shared_error, fit.per_image_error
    if not (np.isfinite(shared) and np.isfinite(own) and own > 0):
        return True, (f"no usable per-image fit ({shared:.3f} px shared, {own:.3f} px "
                      f"per image)")
    ratio = shared / own
    why = f"{shared:.3f} px shared, {own:.3f} px with a focal length per image"
    drifting = focal_drift([list(model.values()) for model in fit.focals], drift_factor)
    if ratio <= free_error_ratio:
        return True, why
    if drifting and ratio <= max_error_ratio:
        return True, (f"{why}, within {max_error_ratio:g}x as {drifting} per-image focal "
                      f"length(s) drift over {drift_factor:g}x")
    if drifting:
        return False, f"{why}: more than {max_error_ratio:g}x"
    return False, f"{why}: more than {free_error_ratio:g}x, per-image focal lengths plausible"
