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
focal lengths differ. Plausible per-image focal lengths that fit clearly better (median
reprojection error ratio over ``free_error_ratio``) say they do; drifting ones (some image's
more than ``drift_factor`` from its model's median) overfit weak geometry and need the
larger ``max_error_ratio`` (:func:`prefer_shared_cameras`). The per-image copies, adjusted
once more with the pipeline's refinement options (each image's distortion too), are then
the scene's models, at no mapping's cost (on three demo sets they did better on the lowest
score than a per-image mapping). A scene is mapped with a camera per image only where the
shared cameras leave an image with verified matches unregistered (reconstruction.py).

The bar, and the ratios measured on realdev, realdev2 and the demo sets: options.py;
how this compares with mapping each scene both ways: benchmarks/README.md.

Everything that touches pycolmap here works on copies; the models the mapper wrote are not
changed.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import numpy as np
import pycolmap

__all__ = ["PerImageFit", "bundle_adjust", "focal_drift", "observation_errors",
           "per_image_fit", "prefer_shared_cameras", "split_cameras"]


class PerImageFit(NamedTuple):
    """The two bundle adjustments of a scene's shared-camera models (:func:`per_image_fit`).

    shared_error, per_image_error: the median reprojection error of all their
    observations, pixels (nan where no model has observations);
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


def observation_errors(reconstruction: pycolmap.Reconstruction) -> np.ndarray:
    """(M,) the reprojection error in pixels of every observation of a 3D point by a
    registered image (its camera's projection of the point against the keypoint); inf
    where the point has no projection (behind the camera)."""
    xyz = {point_id: point.xyz for point_id, point in reconstruction.points3D.items()}
    errors = [np.zeros(0)]
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.image(image_id)
        seen = [(p.xy, xyz[p.point3D_id]) for p in image.points2D if p.has_point3D()]
        if not seen:
            continue
        keypoints = np.array([xy for xy, _ in seen])
        points = np.array([X for _, X in seen])
        cam_from_world = image.cam_from_world().matrix()
        in_camera = points @ cam_from_world[:, :3].T + cam_from_world[:, 3]
        projected = reconstruction.camera(image.camera_id).img_from_cam(in_camera)
        errors.append(np.linalg.norm(projected - keypoints, axis=1))
    errors = np.concatenate(errors)
    return np.where(np.isfinite(errors), errors, np.inf)  # behind the camera: no projection


def bundle_adjust(reconstruction: pycolmap.Reconstruction, *, refine_extra_params: bool,
                  refine_principal_point: bool, refine_focal_length: bool = True,
                  num_threads: int = 1) -> None:
    """pycolmap's bundle adjustment of ``reconstruction`` in place, refining poses, points
    and the intrinsics asked for, on the CPU and one thread by default (Ceres is then
    reproducible; the GPU solver is not); its points' errors updated."""
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = refine_focal_length
    options.refine_principal_point = refine_principal_point
    options.refine_extra_params = refine_extra_params
    options.ceres.use_gpu = False
    options.ceres.solver_options.num_threads = num_threads
    pycolmap.bundle_adjustment(reconstruction, options)
    reconstruction.update_point_3d_errors()


def per_image_fit(reconstructions: Sequence[pycolmap.Reconstruction], *,
                  refine_extra_params: bool, refine_principal_point: bool,
                  num_threads: int = 1
                  ) -> tuple[PerImageFit, list[pycolmap.Reconstruction]]:
    """Bundle-adjust copies of ``reconstructions`` (one scene's shared-camera models) with
    their shared cameras (refining focal length, and distortion and principal point as
    asked), then with a camera per image from there, refining only each image's focal
    length; both median observation errors and the per-image focal lengths, and the
    per-image copies. The median, not the mean: a few bad matches on repetitive texture,
    whose errors a free focal length shrinks most, weigh no more than any other
    observation."""
    shared_errors, per_image_errors, focals, split = [np.zeros(0)], [np.zeros(0)], [], []
    for original in reconstructions:
        shared = pycolmap.Reconstruction(original)
        bundle_adjust(shared, refine_extra_params=refine_extra_params,
                      refine_principal_point=refine_principal_point, num_threads=num_threads)
        per_image = split_cameras(shared)
        bundle_adjust(per_image, refine_extra_params=False, refine_principal_point=False,
                      num_threads=num_threads)
        shared_errors.append(observation_errors(shared))
        per_image_errors.append(observation_errors(per_image))
        focals.append({image.name: per_image.camera(image.camera_id).mean_focal_length()
                       for image in per_image.images.values()})
        split.append(per_image)
    shared_all, per_image_all = np.concatenate(shared_errors), np.concatenate(per_image_errors)
    if not len(shared_all):
        return PerImageFit(float("nan"), float("nan"), focals), split
    return PerImageFit(float(np.median(shared_all)), float(np.median(per_image_all)),
                       focals), split


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
    why = (f"median errors {shared:.3f} px shared, {own:.3f} px with a focal length per "
           f"image")
    drifting = focal_drift([list(model.values()) for model in fit.focals], drift_factor)
    if ratio <= free_error_ratio:
        return True, why
    if drifting and ratio <= max_error_ratio:
        return True, (f"{why}, within {max_error_ratio:g}x as {drifting} per-image focal "
                      f"length(s) drift over {drift_factor:g}x")
    if drifting:
        return False, f"{why}: more than {max_error_ratio:g}x"
    return False, f"{why}: more than {free_error_ratio:g}x, per-image focal lengths plausible"
