"""Structure-from-motion of one image cluster with pycolmap, from our own matches.

The stages before this one give, for the images of one cluster of one dataset:

- keypoints per image, (N, 2) float32, in original-image pixels with the OpenCV convention
  (integer values at pixel centres);
- verified inlier matches per image pair ``(a, b)``, (K, 2) int32: column 0 indexes the
  keypoints of ``a``, column 1 those of ``b``.

This module writes them into a COLMAP database (:func:`build_database`) and runs one of
pycolmap's mappers on it (:func:`reconstruct`, ``ReconConf.mapper``): the incremental one
(COLMAP) or the global one (GLOMAP's, merged into COLMAP), or with "auto" both, keeping the
models that hold more of the cluster's images (mapper_choice.py). No intrinsics are known: every image gets its
own camera (``ReconConf.camera_model``) with focal length ``focal_prior_factor * max(W, H)``
pixels as a starting value and the principal point at the image centre; COLMAP refines them.
(The global mapper would rather have focal-length priors; its warning that they are missing
is silenced: an IMC image brings none.)

Conventions:

- COLMAP puts integer pixel coordinates at pixel *corners*, so keypoints are written as
  ``x_colmap = x_opencv + 0.5``. Poses are unaffected.
- Poses are world-to-camera, ``x_cam = R_cw @ X + t_cw`` (the convention of
  ``src.geometry``; COLMAP's ``image.cam_from_world()`` is the same transformation), in the
  arbitrary scale and frame of each model.

Outputs are cached in ``work_dir``::

    database.db              the COLMAP database (rebuilt before every mapping run)
    models/manifest.json     fingerprint of the inputs and options, one entry per model
    models/<k>/              model k in COLMAP binary format, k = 0 the largest

(with ``camera_sharing "auto"`` in ``cameras-size/``, ``cameras-split/`` (those models refit
with a camera per image, or none, and the decision) and where a camera per image is mapped,
``cameras-image/``; with ``mapper "auto"`` under ``global/`` and ``incremental/``).

A later call with the same inputs and options loads ``models/`` instead of mapping again;
changed inputs or options (a different fingerprint), or ``overwrite=True``, map afresh.
``models/`` is written to a temporary folder and renamed into place, so a crash never leaves
a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import cv2
import numpy as np
import pycolmap

from src.data_io import atomic_path, decode_image_file
from src.geometric.camera_choice import bundle_adjust, per_image_fit, prefer_shared_cameras
from src.geometric.concurrency import in_sfm_slot, pycolmap_here
from src.geometric.mapper_choice import (Placement, evidenced_images, held_images,
                                         prefer_mapper)
from src.geometric.options import (AUTO_MAPPER, CAMERA_SHARING, CAMERA_SHARING_DEFAULT,
                                   HELD_MAX_DISTANCE_SHARE, HELD_MIN_EXPLAINED,
                                   MAPPER_CHOICES, MAPPERS, MIN_SCENE_SIZE,
                                   REREGISTER_BELOW_POINTS, REREGISTER_MIN_INLIERS,
                                   SFM_THREADS, SHARED_CAMERA_FREE_ERROR_RATIO,
                                   SHARED_CAMERA_MAX_ERROR_RATIO, FOCAL_DRIFT_FACTOR,
                                   check_choices)

log = logging.getLogger(__name__)
R = TypeVar("R")

__all__ = [
    "ReconConf",
    "Model",
    "SceneSfM",
    "SUPPORTED_CAMERA_MODELS",
    "read_image_size",
    "build_database",
    "reconstruct",
    "reconstruct_scene",
    "load_models",
    "mean_reprojection_error",
    "poses_for_images",
    "pinhole_keypoints",
    "placements",
    "weakly_supported_images",
]

# Camera models an image may be given; all are pinhole models that COLMAP's mapper refines.
SUPPORTED_CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
PAIR_GEOMETRIES = ("colmap", "fundamental")  # see ReconConf.pair_geometry
PAIR_CAMERAS = ("one", "separate")  # see ReconConf.pair_cameras
# Bump when the database layout or the cached model format changes, so old caches are redone.
CACHE_VERSION = 1
# Bump when camera_choice's fit or rule changes, so cached choices (cameras-split/) are redone.
CAMERA_CHOICE_VERSION = 1
DATABASE_FILE = "database.db"
MODELS_DIR = "models"
MANIFEST_FILE = "manifest.json"
_MAPPING_TMP_PREFIX = ".mapping."  # pycolmap's own output folder while it maps
# Offset from OpenCV pixel coordinates (integers at pixel centres) to COLMAP's (at corners).
OPENCV_TO_COLMAP_PIXEL = 0.5
# Options that change only what is printed, never the result; left out of the cache key.
_NON_RESULT_FIELDS = ("colmap_verbose",)

PairKey = tuple[str, str]


# =========================================================================== configuration
@dataclass(frozen=True)
class ReconConf:
    """Options of the reconstruction stage."""

    # "incremental": COLMAP's incremental mapper; "global": its global mapper (rotation
    # averaging + global positioning + bundle adjustment, one model per connected part);
    # "auto": ``fallback_mapper`` first, the other one too unless the first's models hold
    # every image, and the models that hold more images kept (mapper_choice.py).
    mapper: str = "incremental"
    fallback_mapper: str = AUTO_MAPPER["sift"]  # "auto": mapped first, kept on ties
    # "auto": an image is held when its model explains this share of its verified matches,
    # a match when its Sampson distance is at most the second share of the larger image side.
    held_min_explained: float = HELD_MIN_EXPLAINED
    held_max_distance_share: float = HELD_MAX_DISTANCE_SHARE
    # How each verified pair's two-view geometry reaches the mapper. "colmap": COLMAP
    # estimates it again from our inliers (F, or H for a planar or panoramic pair, whose
    # relative pose the global mapper then takes from H; degenerate pairs are dropped);
    # "fundamental": all our inliers with an 8-point F. Measured on realdev2 (SIFT, seeds
    # 40-42): global mapper 76.92 / 86.73 / 88.50 -> 87.32 / 86.93 / 87.52.
    pair_geometry: str = "colmap"
    pair_max_error_px: float = 4.0  # "colmap": its RANSAC threshold (COLMAP's default), px
    camera_model: str = "SIMPLE_RADIAL"  # COLMAP model of each image's camera (see SUPPORTED_...)
    # "image": a camera per image; "size": one camera per image size; "auto": one per size,
    # refit per image where that fits clearly better (options.CAMERA_SHARING says why).
    camera_sharing: str = CAMERA_SHARING_DEFAULT
    # "auto"'s test (camera_choice.prefer_shared_cameras): shared cameras kept unless a focal
    # length per image fits more than the first error ratio better, the second where those
    # focal lengths drift
    shared_camera_free_error_ratio: float = SHARED_CAMERA_FREE_ERROR_RATIO
    shared_camera_max_error_ratio: float = SHARED_CAMERA_MAX_ERROR_RATIO
    # How COLMAP's two-view estimator sees a pair of images with cameras of their own
    # ("colmap" pair geometry): "separate", as the two cameras they are (F only); "one", as
    # one camera (a shared focal length and an E estimated with F). "separate" measured
    # better for per-image models (benchmarks/README.md: demo 77.33 / 78.67 / 79.98 -> 80.27 /
    # 81.55 / 81.55, realdev and realdev2 unchanged).
    pair_cameras: str = "separate"
    focal_prior_factor: float = 1.2  # initial focal length = this x max(width, height), pixels
    min_model_size: int = MIN_SCENE_SIZE  # models registering fewer images are dropped
    max_models: int = 50  # most models the mapper may start (1 = a single model)
    max_model_overlap: int = 20  # most images two models may share (COLMAP option)
    min_num_matches: int = 15  # image pairs with fewer verified matches are ignored
    init_min_num_inliers: int = 100  # matches the initial pair needs (COLMAP relaxes it if none)
    abs_pose_min_num_inliers: int = 30  # 2D-3D inliers an image needs to be registered
    # Global mapper: an image its model supports with fewer 3D points than this is taken
    # out and registered again by COLMAP's incremental mapper continuing from the model,
    # needing ``reregister_min_inliers`` 2D-3D inliers; 0 = never (options.py says why).
    reregister_below_points: int = REREGISTER_BELOW_POINTS
    reregister_min_inliers: int = REREGISTER_MIN_INLIERS
    ba_refine_focal: bool = True  # bundle adjustment refines the focal length
    ba_refine_principal_point: bool = False  # ... the principal point (usually ill-posed)
    ba_refine_extra_params: bool = True  # ... the distortion parameters of the model
    # Global bundle adjustment skips 3D points that add no coverage (COLMAP's
    # ba_global_ignore_redundant_points3D). Measured on realdev (2048 SIFT keypoints): SfM
    # 16.5 s -> 8.3 s and score 98.82 -> 99.53; on the demo data see benchmarks/README.md.
    ba_ignore_redundant_points: bool = True
    seed: int = 0  # seed of COLMAP's random generator (RANSAC, sampling); -1 = COLMAP default
    num_threads: int = SFM_THREADS  # mapper threads; -1 = all cores; 1 is reproducible
    # Stop mapping after this many seconds (-1 = no limit; 0 = auto, 60 + 5 per image). A
    # safety net: on DISK + LightGlue demo matches full of weak false pairs the mapper ran
    # for over 15 minutes on 23 images. COLMAP checks it between registrations, so a run
    # may overshoot; what it found by then is kept.
    max_runtime_seconds: int = 0
    colmap_verbose: bool = False  # let COLMAP print its INFO log (else warnings and errors only)

    def __post_init__(self) -> None:
        check_choices(self, {"mapper": MAPPER_CHOICES, "fallback_mapper": MAPPERS,
                             "pair_geometry": PAIR_GEOMETRIES,
                             "camera_model": SUPPORTED_CAMERA_MODELS,
                             "camera_sharing": CAMERA_SHARING,
                             "pair_cameras": PAIR_CAMERAS})
        ratio = self.shared_camera_max_error_ratio
        if not (np.isfinite(ratio) and ratio >= 1):
            raise ValueError("ReconConf.shared_camera_max_error_ratio must be a number >= 1, "
                             f"got {ratio!r}")
        free = self.shared_camera_free_error_ratio
        if not (np.isfinite(free) and 1 <= free <= ratio):
            raise ValueError("ReconConf.shared_camera_free_error_ratio must be a number from 1 "
                             f"to shared_camera_max_error_ratio ({ratio!r}), got {free!r}")
        for name in ("held_min_explained", "held_max_distance_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value <= 1:
                raise ValueError(f"ReconConf.{name} must be a number in (0, 1], got {value!r}")
        if not (np.isfinite(self.pair_max_error_px) and self.pair_max_error_px > 0):
            raise ValueError("ReconConf.pair_max_error_px must be a positive number, got "
                             f"{self.pair_max_error_px!r}")
        if not (np.isfinite(self.focal_prior_factor) and self.focal_prior_factor > 0):
            raise ValueError("ReconConf.focal_prior_factor must be a positive number, got "
                             f"{self.focal_prior_factor!r}")
        minimum = {"min_model_size": 2, "max_models": 1, "max_model_overlap": 0,
                   "min_num_matches": 1, "init_min_num_inliers": 1,
                   "abs_pose_min_num_inliers": 1, "reregister_below_points": 0,
                   "reregister_min_inliers": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ReconConf.{name} must be an integer >= {low}, got {value!r}")
        for name in ("seed", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ReconConf.{name} must be an integer, got {value!r}")
        if self.seed < -1:
            raise ValueError(f"ReconConf.seed must be >= 0 (or -1 for COLMAP's default), "
                             f"got {self.seed}")
        if self.num_threads == 0 or self.num_threads < -1:
            raise ValueError(f"ReconConf.num_threads must be >= 1 or -1 (all cores), got "
                             f"{self.num_threads}")
        runtime = self.max_runtime_seconds
        if isinstance(runtime, bool) or not isinstance(runtime, int) or runtime < -1:
            raise ValueError("ReconConf.max_runtime_seconds must be an integer >= 0 (0 = auto) "
                             f"or -1 (no limit), got {runtime!r}")

    def cache_key(self) -> str:
        """12 hex digits that change whenever an option that can change the result does."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in _NON_RESULT_FIELDS}
        text = json.dumps({"cache_version": CACHE_VERSION, **values}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def runtime_limit(self, num_images: int) -> int:
        """Seconds the mapper may run on ``num_images`` images; -1 for no limit."""
        if self.max_runtime_seconds == 0:
            return 60 + 5 * num_images
        return self.max_runtime_seconds

    def pipeline_options(self, num_images: int = 0) -> pycolmap.IncrementalPipelineOptions:
        """These options as pycolmap's IncrementalPipelineOptions (``num_images`` sets the
        automatic runtime limit)."""
        opts = pycolmap.IncrementalPipelineOptions()
        opts.min_num_matches = self.min_num_matches
        opts.multiple_models = self.max_models > 1
        opts.max_num_models = self.max_models
        opts.max_model_overlap = self.max_model_overlap
        opts.min_model_size = self.min_model_size
        opts.extract_colors = False  # colours are not needed; the images are never read
        opts.ba_refine_focal_length = self.ba_refine_focal
        opts.ba_refine_principal_point = self.ba_refine_principal_point
        opts.ba_refine_extra_params = self.ba_refine_extra_params
        opts.mapper.ba_global_ignore_redundant_points3D = self.ba_ignore_redundant_points
        opts.max_runtime_seconds = self.runtime_limit(num_images)
        # The pipeline passes its seed and thread count down to the mapper and triangulator;
        # setting them on the sub-options as well makes that explicit.
        opts.random_seed = self.seed
        opts.num_threads = self.num_threads
        opts.mapper.random_seed = self.seed
        opts.mapper.num_threads = self.num_threads
        opts.triangulation.random_seed = self.seed
        opts.mapper.init_min_num_inliers = self.init_min_num_inliers
        opts.mapper.abs_pose_min_num_inliers = self.abs_pose_min_num_inliers
        return opts

    def global_options(self) -> pycolmap.GlobalPipelineOptions:
        """These options as pycolmap's GlobalPipelineOptions. The options the two mappers
        share (pairs to use, model size, bundle adjustment, seed, threads) carry over; the
        incremental mapper's own ones (initial pair, registration, runtime) do not apply."""
        opts = pycolmap.GlobalPipelineOptions()
        opts.min_num_matches = self.min_num_matches
        opts.multiple_models = self.max_models > 1
        opts.min_model_size = self.min_model_size
        # Our two-view geometries hold F (no intrinsics are known); the global mapper turns
        # them into relative poses with each camera's current focal length.
        opts.decompose_relative_pose = True
        mapper = opts.mapper
        ba = mapper.bundle_adjustment
        ba.refine_focal_length = self.ba_refine_focal
        ba.refine_principal_point = self.ba_refine_principal_point
        ba.refine_extra_params = self.ba_refine_extra_params
        # The same seed everywhere and the CPU solvers: GPU solvers and several threads
        # change the result run to run (two runs on one set of matches gave 75.82 and 76.77).
        ba.ceres.use_gpu = False
        mapper.global_positioning.use_gpu = False
        for sub in (opts, mapper, mapper.rotation_averaging, mapper.global_positioning):
            sub.random_seed = self.seed
        opts.num_threads = mapper.num_threads = self.num_threads
        return opts


# =========================================================================== results
@dataclass(frozen=True, eq=False)
class Model:
    """One reconstructed model (its own world frame and scale).

    poses: image name -> (R_cw (3, 3), t_cw (3,)), float64, world-to-camera
        (``x_cam = R_cw @ X + t_cw``), for the registered images only.
    num_points3D: number of triangulated 3D points.
    points3D: (P, 3) float64 world coordinates of those points, in COLMAP point-id order (a
        joined model, src.geometric.model_merge, appends the other model's points).
    intrinsics: image name -> K (3, 3) float64 as refined by COLMAP, pixels, in the OpenCV
        convention (integer coordinates at pixel centres); distortion parameters left out.
    mean_reprojection_error: pixels, over all observations of the 3D points (nan if none).
    num_observations: 2D observations of the 3D points.
    shared_cameras: whether some registered images share a camera (intrinsics).
    observations: image name -> (N,) int64, for each of the image's keypoints the index
        (into ``points3D``) of the 3D point it observes, -1 for none.
    cameras: image name -> (COLMAP camera model, width, height, parameters in COLMAP's
        pixel convention), lens distortion included (:func:`pinhole_keypoints`).
    """

    poses: dict[str, tuple[np.ndarray, np.ndarray]]
    num_points3D: int
    points3D: np.ndarray
    intrinsics: dict[str, np.ndarray]
    mean_reprojection_error: float = float("nan")
    num_observations: int = 0
    shared_cameras: bool = False
    observations: dict[str, np.ndarray] = field(default_factory=dict)
    cameras: dict[str, tuple[str, int, int, tuple[float, ...]]] = field(default_factory=dict)

    @property
    def num_registered(self) -> int:
        """Number of registered images."""
        return len(self.poses)


def _model_from_reconstruction(rec: pycolmap.Reconstruction) -> Model:
    poses, intrinsics, cameras = {}, {}, {}
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        cam_from_world = image.cam_from_world()
        poses[image.name] = (np.array(cam_from_world.rotation.matrix(), dtype=np.float64),
                             np.array(cam_from_world.translation, dtype=np.float64).reshape(3))
        camera = image.camera
        K = np.array(camera.calibration_matrix(), dtype=np.float64)
        K[:2, 2] -= OPENCV_TO_COLMAP_PIXEL
        intrinsics[image.name] = K
        cameras[image.name] = (camera.model.name, int(camera.width), int(camera.height),
                               tuple(float(v) for v in camera.params))
    point_ids = sorted(rec.points3D.keys())
    points = [rec.points3D[point_id].xyz for point_id in point_ids]
    points3D = np.array(points, dtype=np.float64).reshape(-1, 3)  # in point-id order
    index_of = {point_id: k for k, point_id in enumerate(point_ids)}
    observations = {}
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        # Keypoints were written to the database in order: point2D k is keypoint k.
        observed = np.full(image.num_points2D(), -1, dtype=np.int64)
        for k in image.get_observation_point2D_idxs():
            observed[k] = index_of[image.point2D(k).point3D_id]
        observations[image.name] = observed
    num_observations = int(rec.compute_num_observations())
    error = float(rec.compute_mean_reprojection_error()) if num_observations else float("nan")
    camera_ids = {rec.image(image_id).camera_id for image_id in rec.reg_image_ids()}
    return Model(poses=dict(sorted(poses.items())), num_points3D=len(points3D),
                 points3D=points3D, intrinsics=dict(sorted(intrinsics.items())),
                 mean_reprojection_error=error, num_observations=num_observations,
                 shared_cameras=len(camera_ids) < len(poses), observations=observations,
                 cameras=dict(sorted(cameras.items())))


# =========================================================================== inputs
def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels of an image file, as the feature stage sees it.

    Decodes with ``cv2.IMREAD_UNCHANGED`` like ``src.data_io.read_image_rgb``, so the EXIF
    orientation is ignored there and here alike (keypoints and size agree).
    """
    image = decode_image_file(path)
    return int(image.shape[1]), int(image.shape[0])


def _check_keypoints(images: Sequence[str], keypoints: Mapping[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """Keypoints of the cluster's images as float64 (N, 2); ValueError for bad arrays."""
    out = {}
    for name in images:
        if name not in keypoints:
            raise ValueError(f"no keypoints given for image {name!r} (give an empty (0, 2) "
                             "array for an image without keypoints)")
        kpts = np.asarray(keypoints[name])
        if kpts.ndim != 2 or kpts.shape[1] != 2:
            raise ValueError(f"keypoints of {name!r} must have shape (N, 2), got {kpts.shape}")
        kpts = kpts.astype(np.float64)
        if not np.all(np.isfinite(kpts)):
            raise ValueError(f"keypoints of {name!r} contain nan or inf")
        out[name] = kpts
    return out


def _one_to_one(matches: np.ndarray) -> np.ndarray:
    """Keep the first match of every keypoint on both sides (COLMAP assumes one-to-one)."""
    _, first_a = np.unique(matches[:, 0], return_index=True)
    kept = matches[np.sort(first_a)]
    _, first_b = np.unique(kept[:, 1], return_index=True)
    return kept[np.sort(first_b)]


def _check_matches(images: Sequence[str], keypoints: Mapping[str, np.ndarray],
                   matches: Mapping[PairKey, np.ndarray]) -> dict[PairKey, np.ndarray]:
    """Matches between images of the cluster, keyed (a, b) as given, int64 (K, 2), one-to-one.

    Pairs with an image outside ``images`` are skipped (the caller may pass the matches of a
    whole dataset); a pair given in both orders, a pair of an image with itself, a bad shape
    or an index out of range raise ValueError naming the pair.
    """
    in_cluster = set(images)
    out: dict[PairKey, np.ndarray] = {}
    seen: set[frozenset] = set()
    skipped = 0
    for key, pair_matches in matches.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"match keys must be (image_a, image_b) tuples, got {key!r}")
        a, b = key
        if a not in in_cluster or b not in in_cluster:
            skipped += 1
            continue
        if a == b:
            raise ValueError(f"matches of image {a!r} with itself are not allowed")
        if frozenset(key) in seen:
            raise ValueError(f"matches of the pair ({a!r}, {b!r}) are given twice (in both "
                             "orders); give each pair once")
        seen.add(frozenset(key))
        m = np.asarray(pair_matches)
        if m.size == 0:
            continue
        if m.ndim != 2 or m.shape[1] != 2 or not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"matches of ({a!r}, {b!r}) must be an integer (K, 2) array, got "
                             f"{m.dtype} {m.shape}")
        m = m.astype(np.int64)
        for side, name in ((0, a), (1, b)):
            n_kpts = len(keypoints[name])
            if m[:, side].min() < 0 or m[:, side].max() >= n_kpts:
                raise ValueError(f"matches of ({a!r}, {b!r}): column {side} indexes keypoints "
                                 f"of {name!r} out of range [0, {n_kpts})")
        unique = _one_to_one(m)
        if len(unique) < len(m):
            log.debug("pair (%s, %s): dropped %d matches that reuse a keypoint", a, b,
                      len(m) - len(unique))
        out[key] = unique
    if skipped:
        log.debug("ignored %d matched pair(s) with an image outside the cluster", skipped)
    return out


def _fundamental_colmap(pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray | None:
    """F (3, 3) with x_b^T F x_a = 0 from already-verified correspondences (N, 2), by the
    normalised 8-point method (no RANSAC); None below 8 points or if it fails."""
    if len(pts_a) < 8:
        return None
    F, _ = cv2.findFundamentalMat(pts_a, pts_b, cv2.FM_8POINT)
    if F is None or F.shape != (3, 3) or not np.all(np.isfinite(F)):
        return None
    return F.astype(np.float64)


# =========================================================================== database
def build_database(db_path: str | os.PathLike, image_dir: str | os.PathLike,
                   images: Sequence[str], keypoints: Mapping[str, np.ndarray],
                   matches: Mapping[PairKey, np.ndarray], conf: ReconConf = ReconConf(),
                   image_sizes: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Write a COLMAP database for one cluster at ``db_path`` (replacing any old one).

    images: the cluster's image names (files in ``image_dir``); image ids follow this order.
    keypoints: name -> (N, 2) keypoints in original-image pixels, OpenCV convention.
    matches: (a, b) -> (K, 2) verified inlier matches (indices into keypoints[a], [b]).
        Pairs with an image outside ``images`` are ignored.
    conf: the camera model and focal prior.
    image_sizes: optional name -> (width, height) pixels, to avoid decoding the images.

    Writes per image a camera (``conf.camera_model``, focal ``focal_prior_factor * max(W,
    H)``, principal point at the centre, no prior focal length; with ``camera_sharing
    "size"`` one camera and rig serve all images of a size), a single-camera rig, a frame,
    the image and its keypoints (shifted by +0.5 px to COLMAP's convention); per pair the
    matches and their two-view geometry (``conf.pair_geometry``: COLMAP's own estimate from
    them, or all of them as inliers with an 8-point F).
    The file is built under a temporary name and renamed into place when complete.
    """
    images = list(images)
    if len(set(images)) != len(images):
        raise ValueError("build_database: image names are not unique")
    kpts = _check_keypoints(images, keypoints)
    pair_matches = _check_matches(images, kpts, matches)
    sizes = _checked_image_sizes(Path(image_dir), images, kpts, image_sizes)
    with atomic_path(db_path) as tmp:
        tmp.unlink()  # an empty file is not a database; let COLMAP create it
        with pycolmap.Database.open(tmp) as db:
            rigs: dict[tuple[int, int], tuple[int, int]] = {}  # size -> (camera, rig) ids
            cameras = {name: _write_image(db, name, sizes[name], kpts[name], conf, rigs)
                       for name in images}
            for (a, b), m in pair_matches.items():
                _write_verified_pair(db, cameras, kpts, (a, b), m, conf)


def _checked_image_sizes(image_dir: Path, images: Sequence[str],
                         kpts: Mapping[str, np.ndarray],
                         image_sizes: Mapping[str, tuple[int, int]] | None
                         ) -> dict[str, tuple[int, int]]:
    """(width, height) of each image (given, else read from its file); ValueError when its
    keypoints fall outside it (they must be in original-image pixels)."""
    sizes = {}
    for name in images:
        if image_sizes is not None and name in image_sizes:
            width, height = (int(v) for v in image_sizes[name])
        else:
            width, height = read_image_size(image_dir / name)
        x, y = kpts[name][:, 0], kpts[name][:, 1]
        # OpenCV pixel centres span [-0.5, W - 0.5]; allow half a pixel more either side.
        if len(x) and (min(x.min(), y.min()) < -1.0 or x.max() > width or y.max() > height):
            raise ValueError(f"keypoints of {name!r} fall outside its {width}x{height} image "
                             f"(x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f}):"
                             " they must be in original-image pixels")
        sizes[name] = (width, height)
    return sizes


def _write_image(db: pycolmap.Database, name: str, size: tuple[int, int],
                 keypoints: np.ndarray, conf: ReconConf,
                 rigs: dict[tuple[int, int], tuple[int, int]]) -> tuple[int, pycolmap.Camera]:
    """One image with its frame and keypoints (OpenCV pixels, shifted to COLMAP's), and
    its own camera and single-camera rig, or with ``conf.camera_sharing == "size"`` those
    already written for its size (``rigs``: size -> (camera id, rig id), updated); returns
    its image id and camera."""
    width, height = size
    camera = pycolmap.Camera.create_from_model_name(
        pycolmap.INVALID_CAMERA_ID, conf.camera_model,
        conf.focal_prior_factor * max(width, height), width, height)
    camera.has_prior_focal_length = False  # a guess, not EXIF: let COLMAP refine
    if conf.camera_sharing == "size" and size in rigs:
        camera_id, rig_id = rigs[size]
        camera.camera_id = camera_id
    else:
        camera_id = db.write_camera(camera)
        if conf.camera_sharing == "image" and conf.pair_cameras != "one":
            camera.camera_id = camera_id  # the estimator tells cameras apart by id
        rig = pycolmap.Rig()
        rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id))
        rig_id = db.write_rig(rig)
        rigs[size] = (camera_id, rig_id)
    sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id)
    image_id = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
    frame = pycolmap.Frame()
    frame.rig_id = rig_id
    frame.add_data_id(pycolmap.data_t(sensor, image_id))
    db.write_frame(frame)
    db.write_keypoints(image_id, (keypoints + OPENCV_TO_COLMAP_PIXEL).astype(np.float32))
    return image_id, camera


def _write_verified_pair(db: pycolmap.Database,
                         cameras: Mapping[str, tuple[int, pycolmap.Camera]],
                         kpts: Mapping[str, np.ndarray], pair: PairKey, m: np.ndarray,
                         conf: ReconConf) -> None:
    """A pair's matches and its two-view geometry (``conf.pair_geometry``)."""
    a, b = pair
    if cameras[a][0] > cameras[b][0]:  # store every pair with id1 < id2
        a, b, m = b, a, m[:, ::-1]
    m = np.ascontiguousarray(m, dtype=np.uint32)
    db.write_matches(cameras[a][0], cameras[b][0], m)
    points_a = kpts[a][m[:, 0]].astype(np.float64) + OPENCV_TO_COLMAP_PIXEL
    points_b = kpts[b][m[:, 1]].astype(np.float64) + OPENCV_TO_COLMAP_PIXEL
    if conf.pair_geometry == "colmap":
        geometry = _colmap_geometry(cameras[a][1], points_a, cameras[b][1], points_b, m, conf)
    else:
        geometry = _fundamental_geometry(points_a, points_b, m)
    db.write_two_view_geometry(cameras[a][0], cameras[b][0], geometry)


def _fundamental_geometry(points_a: np.ndarray, points_b: np.ndarray, m: np.ndarray
                          ) -> pycolmap.TwoViewGeometry:
    """All matches as inliers, UNCALIBRATED, F by the 8-point method: the mapper uses them
    as they are without re-verifying."""
    geometry = pycolmap.TwoViewGeometry()
    geometry.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
    F = _fundamental_colmap(points_a, points_b)
    if F is not None:
        geometry.F = F
    geometry.inlier_matches = m
    return geometry


def _colmap_geometry(camera_a: pycolmap.Camera, points_a: np.ndarray,
                     camera_b: pycolmap.Camera, points_b: np.ndarray, m: np.ndarray,
                     conf: ReconConf) -> pycolmap.TwoViewGeometry:
    """COLMAP's own two-view geometry of our verified matches (points in COLMAP pixels):
    F or H and the configuration they imply (planar, panoramic, degenerate), with its
    inliers given as rows of ``m``. Seeded like the mappers."""
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = conf.min_num_matches
    options.ransac.max_error = conf.pair_max_error_px
    options.ransac.random_seed = conf.seed
    index = np.arange(len(m), dtype=np.uint32)
    geometry = pycolmap.estimate_two_view_geometry(camera_a, points_a, camera_b, points_b,
                                                   np.stack([index, index], axis=1), options)
    kept = np.asarray(geometry.inlier_matches, np.int64).reshape(-1, 2)[:, 0]
    geometry.inlier_matches = np.ascontiguousarray(m[kept], dtype=np.uint32)
    return geometry


# =========================================================================== mapping
@contextlib.contextmanager
def _colmap_log_level(verbose: bool, errors_only: bool = False) -> Iterator[None]:
    """Show COLMAP's INFO log only when ``verbose`` (its warnings too unless
    ``errors_only``); restore the previous level afterwards."""
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = previous if verbose else max(previous, 2 if errors_only else 1)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def _fingerprint(images: Sequence[str], keypoints: Mapping[str, np.ndarray],
                 matches: Mapping[PairKey, np.ndarray], conf: ReconConf) -> str:
    """SHA-1 of everything the models depend on: options, images, keypoints and matches."""
    digest = hashlib.sha1()
    digest.update(conf.cache_key().encode())
    for name in images:
        digest.update(b"\0image\0" + name.encode())
        digest.update(np.ascontiguousarray(keypoints[name], dtype=np.float64).tobytes())
    for (a, b) in sorted(matches):
        digest.update(b"\0pair\0" + a.encode() + b"\0" + b.encode())
        digest.update(np.ascontiguousarray(matches[(a, b)], dtype=np.int64).tobytes())
    return digest.hexdigest()


def load_models(models_dir: str | os.PathLike) -> list[Model] | None:
    """The models cached in ``models_dir`` (see the module doc); None if there is no
    complete cache there."""
    models_dir = Path(models_dir)
    try:
        manifest = json.loads((models_dir / MANIFEST_FILE).read_text())
        entries = manifest["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    models = []
    for k, entry in enumerate(entries):
        try:
            model = _model_from_reconstruction(pycolmap.Reconstruction(models_dir / str(k)))
        except Exception as error:  # pycolmap raises ValueError/RuntimeError on bad files
            log.warning("cached model %s cannot be read (%s: %s); ignoring the cache, the "
                        "cluster is mapped again", models_dir / str(k), type(error).__name__,
                        error)
            return None
        if model.num_registered != entry["num_registered"]:
            log.warning("cached model %s registers %d images but its manifest says %d; "
                        "ignoring the cache", models_dir / str(k), model.num_registered,
                        entry["num_registered"])
            return None
        models.append(model)
    return models


def _cached_fingerprint(models_dir: Path) -> str | None:
    try:
        return json.loads((models_dir / MANIFEST_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _write_models(models_dir: Path, reconstructions: list[pycolmap.Reconstruction],
                  manifest: dict) -> None:
    """Write the reconstructions and the manifest to a temporary folder, then swap it in."""
    models_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{models_dir.name}.", suffix=".tmp",
                                dir=models_dir.parent))
    try:
        for k, rec in enumerate(reconstructions):
            (tmp / str(k)).mkdir()
            rec.write(tmp / str(k))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if models_dir.exists():
            shutil.rmtree(models_dir)
        os.replace(tmp, models_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(work_dir: Path) -> None:
    """Delete temporary folders a killed run may have left in ``work_dir``."""
    if not work_dir.is_dir():
        return
    for leftover in [*work_dir.glob(f"{_MAPPING_TMP_PREFIX}*"),
                     *work_dir.glob(f".{MODELS_DIR}.*.tmp")]:
        if leftover.is_dir():
            log.debug("removing %s left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


class SceneSfM(NamedTuple):
    """What SfM made of one cluster: its models (largest first, as :func:`reconstruct` gives
    them), which cameras they were mapped with and why (e.g. ``"shared (median errors 0.68
    px shared, 0.66 px with a focal length per image)"``), and which mapper made them and why
    (e.g. ``"global (images held of 27: global 26, incremental 17)"``); both strings empty
    when no mapping was tried (fewer than 2 images, or no pair with enough verified
    matches)."""

    models: list[Model]
    cameras: str
    mapper: str


def reconstruct(image_dir: str | os.PathLike, images: Sequence[str],
                keypoints: Mapping[str, np.ndarray], matches: Mapping[PairKey, np.ndarray],
                work_dir: str | os.PathLike, conf: ReconConf = ReconConf(),
                overwrite: bool = False, name: str | None = None,
                image_sizes: Mapping[str, tuple[int, int]] | None = None) -> list[Model]:
    """SfM of one cluster with ``conf.mapper``; the models, largest first.

    image_dir: folder of the image files; images: the cluster's image names (unique).
    keypoints, matches, image_sizes: as in :func:`build_database`.
    work_dir: where the databases and the cached models live (one folder per cluster).
    overwrite: map again even if ``work_dir`` holds models for these inputs.
    name: how log messages call the cluster (default: ``work_dir``).

    Returns the models registering at least ``conf.min_model_size`` images, sorted by the
    number of registered images (then 3D points), descending; an image may be registered
    in more than one model (see :func:`poses_for_images`). Returns [] with no pycolmap call
    for fewer than 2 images, and [] with a warning when no pair has
    ``conf.min_num_matches`` matches, when the mapper finds no model, or when pycolmap raises
    (that failure is not cached, so a later call tries again). With ``camera_sharing
    "auto"`` the cluster is mapped with cameras shared by image size, and those models
    refit with a camera per image where camera_choice.py finds that one camera does not fit
    the photos (:func:`_reconstruct_cameras`); with ``mapper "auto"`` both mappers may map it and
    ``mapper_choice.prefer_mapper`` picks (:func:`reconstruct_scene` also says why).
    """
    return reconstruct_scene(image_dir, images, keypoints, matches, work_dir, conf, overwrite,
                             name, image_sizes).models


def reconstruct_scene(image_dir: str | os.PathLike, images: Sequence[str],
                      keypoints: Mapping[str, np.ndarray],
                      matches: Mapping[PairKey, np.ndarray], work_dir: str | os.PathLike,
                      conf: ReconConf = ReconConf(), overwrite: bool = False,
                      name: str | None = None,
                      image_sizes: Mapping[str, tuple[int, int]] | None = None) -> SceneSfM:
    """:func:`reconstruct`'s models, and which cameras and which mapper made them and why."""
    work_dir = Path(work_dir)
    label = name or str(work_dir)
    images = list(images)
    if len(set(images)) != len(images):
        raise ValueError(f"cluster {label}: image names are not unique")
    if len(images) < 2:
        log.info("cluster %s: %d image(s), nothing to reconstruct", label, len(images))
        return SceneSfM([], "", "")
    kpts = _check_keypoints(images, keypoints)
    pair_matches = _check_matches(images, kpts, matches)
    usable = [key for key, m in pair_matches.items() if len(m) >= conf.min_num_matches]
    if not usable:
        log.warning("cluster %s: no image pair has %d or more verified matches (%d pair(s) "
                    "given); no reconstruction, its %d images stay unregistered", label,
                    conf.min_num_matches, len(pair_matches), len(images))
        return SceneSfM([], "", "")
    if conf.mapper != "auto":
        models, _, cameras = _reconstruct_cameras(image_dir, images, kpts, pair_matches,
                                                  len(usable), work_dir, conf, overwrite,
                                                  label, image_sizes)
        return SceneSfM(models, cameras, conf.mapper)
    return _reconstruct_either(image_dir, images, kpts, pair_matches, len(usable), work_dir,
                               conf, overwrite, label, image_sizes)


def _reconstruct_either(image_dir: str | os.PathLike, images: list[str],
                        kpts: dict[str, np.ndarray], pair_matches: dict[PairKey, np.ndarray],
                        num_usable_pairs: int, work_dir: Path, conf: ReconConf,
                        overwrite: bool, label: str,
                        image_sizes: Mapping[str, tuple[int, int]] | None) -> SceneSfM:
    """Mapper "auto": ``conf.fallback_mapper`` in ``work_dir/<mapper>``; unless its models
    hold every image that has verified matches, the other mapper too, with the cameras the
    first kept (they belong to the photos, not the mapper); the models holding more images
    kept (mapper_choice.py)."""
    sizes = _checked_image_sizes(Path(image_dir), images, kpts, image_sizes)
    evidenced = evidenced_images(pair_matches, conf.min_num_matches)
    results: dict[str, tuple[list[Model], str]] = {}
    held: dict[str, int] = {}
    sharing = conf.camera_sharing
    for mapper in (conf.fallback_mapper, *(m for m in MAPPERS if m != conf.fallback_mapper)):
        if held and max(held.values()) == len(evidenced):
            break  # nothing left for another mapper to hold
        inherited = bool(held) and sharing != conf.camera_sharing
        run_conf = replace(conf, mapper=mapper, camera_sharing=sharing)
        models, kept_sharing, cameras = _reconstruct_cameras(
            image_dir, images, kpts, pair_matches, num_usable_pairs, work_dir / mapper,
            run_conf, overwrite, label, sizes)
        if inherited:
            cameras = f"{cameras}, as the {conf.fallback_mapper} mapper chose"
        # a first mapper that found nothing chose no cameras: the next one weighs both again
        sharing = kept_sharing if models else conf.camera_sharing
        results[mapper] = (models, cameras)
        with pycolmap_here():  # a scene's thread, beside another's mapping (_map_once)
            pinhole = pinhole_keypoints(models, kpts)
        held[mapper] = len(held_images(
            placements(models, images), pinhole, pair_matches, sizes,
            min_matches=conf.min_num_matches, max_distance_share=conf.held_max_distance_share,
            min_explained=conf.held_min_explained))
    winner, why = prefer_mapper(held, conf.fallback_mapper, len(evidenced))
    log.info("cluster %s: the %s mapper's models kept (%s)", label, winner, why)
    models, cameras = results[winner]
    return SceneSfM(models, cameras, f"{winner} ({why})")


def _reconstruct_cameras(image_dir: str | os.PathLike, images: list[str],
                         kpts: dict[str, np.ndarray], pair_matches: dict[PairKey, np.ndarray],
                         num_usable_pairs: int, work_dir: Path, conf: ReconConf,
                         overwrite: bool, label: str,
                         image_sizes: Mapping[str, tuple[int, int]] | None
                         ) -> tuple[list[Model], str, str]:
    """One mapper's models with ``conf.camera_sharing``, the sharing they were mapped with
    ("image" or "size") and what to say about it. For "auto" (camera_choice.py): cameras
    shared by image size in ``work_dir/cameras-size``, and where those models fit clearly
    better with a focal length per image, the same models with a camera per image,
    bundle-adjusted again (``work_dir/cameras-split``); where the shared cameras leave an
    image with verified matches unregistered (a lens one camera cannot fit may be why), the
    scene mapped with a camera per image (``work_dir/cameras-image``), kept if it registers
    more images."""
    if conf.camera_sharing != "auto":
        models = _map_once(image_dir, images, kpts, pair_matches, num_usable_pairs, work_dir,
                           conf, overwrite, label, image_sizes)
        return models, conf.camera_sharing, _cameras_label(conf)
    sizes = _checked_image_sizes(Path(image_dir), images, kpts, image_sizes)

    def mapped(sharing: str) -> list[Model]:
        return _map_once(image_dir, images, kpts, pair_matches, num_usable_pairs,
                         work_dir / f"cameras-{sharing}", replace(conf, camera_sharing=sharing),
                         overwrite, label, sizes)

    if len(set(sizes.values())) == len(images):  # nothing to share: per-image cameras
        return mapped("image"), "image", "per image (no two images of one size)"
    shared = mapped("size")
    evidenced = len(evidenced_images(pair_matches, conf.min_num_matches))
    if _registered(shared) < evidenced:
        per_image = mapped("image")
        if _registered(per_image) > _registered(shared):
            why = (f"shared cameras register {_registered(shared)} images, a camera per "
                   f"image {_registered(per_image)}")
            log.info("cluster %s: per-image cameras kept (%s)", label, why)
            return per_image, "image", f"per image ({why})"
    if not shared:
        return shared, "size", "shared (no model either way)"
    keep_shared, why, split = _in_slot(_choose_cameras, work_dir / "cameras-size" / MODELS_DIR,
                                       work_dir / "cameras-split" / MODELS_DIR, conf, overwrite)
    log.info("cluster %s: %s cameras kept (%s)", label,
             "shared" if keep_shared else "per-image", why)
    if keep_shared:
        return shared, "size", f"shared ({why})"
    # Another mapper maps with a camera per image: the photos need them. (Its own shared
    # mapping and fit instead gave the same demo scores, 0.2-0.3 s slower; a per-image
    # mapping that drifts holds fewer images and is not kept, mapper_choice.py.)
    return split, "image", f"per image ({why}; the shared models refit with them)"


def _in_slot(fn: Callable[..., R], *args) -> R:
    """``fn(*args)`` in a free slot while a dataset's scenes are mapped side by side
    (concurrency.sfm_slots), else here."""
    future = in_sfm_slot(fn, *args)
    return fn(*args) if future is None else future.result()


def _map_once(*args) -> list[Model]:
    """:func:`_reconstruct_once` in a free slot (:func:`_in_slot`)."""
    return _in_slot(_reconstruct_once, *args)


def _choose_cameras(shared_dir: Path, split_dir: Path, conf: ReconConf, overwrite: bool
                    ) -> tuple[bool, str, list[Model]]:
    """Whether the shared-camera models cached in ``shared_dir`` are kept, why, and if not
    the models that replace them: the same models with a camera per image
    (camera_choice.per_image_fit), bundle-adjusted again with ``conf``'s refinement of focal
    lengths, distortion and principal point, and cached in ``split_dir`` with the decision
    (a later call on the same shared models and rule reads it back). A fit that pycolmap
    fails keeps the shared models (a warning; not cached). Runs pycolmap: called through a
    slot (:func:`_in_slot`)."""
    manifest_text = (shared_dir / MANIFEST_FILE).read_text()
    manifest = json.loads(manifest_text)
    # the shared models as written (a mapping again gives a new manifest) and the rule
    fingerprint = hashlib.sha1(json.dumps(
        [CAMERA_CHOICE_VERSION, manifest_text, conf.shared_camera_free_error_ratio,
         conf.shared_camera_max_error_ratio, FOCAL_DRIFT_FACTOR]).encode()).hexdigest()
    if not overwrite and _cached_fingerprint(split_dir) == fingerprint:
        cached = json.loads((split_dir / MANIFEST_FILE).read_text())
        models = load_models(split_dir)
        if models is not None and {"keep_shared", "why"} <= cached.keys():
            return cached["keep_shared"], cached["why"], models
    _remove_leftovers(split_dir.parent)
    started = time.perf_counter()
    try:
        reconstructions = [pycolmap.Reconstruction(shared_dir / str(k))
                           for k in range(len(manifest["models"]))]
        with _colmap_log_level(conf.colmap_verbose):  # a line per bundle adjustment otherwise
            fit, split = per_image_fit(reconstructions,
                                       refine_extra_params=conf.ba_refine_extra_params,
                                       refine_principal_point=conf.ba_refine_principal_point,
                                       num_threads=conf.num_threads)
            keep_shared, why = prefer_shared_cameras(
                fit, free_error_ratio=conf.shared_camera_free_error_ratio,
                max_error_ratio=conf.shared_camera_max_error_ratio,
                drift_factor=FOCAL_DRIFT_FACTOR)
            if keep_shared:
                split = []
            for reconstruction in split:
                bundle_adjust(reconstruction, refine_focal_length=conf.ba_refine_focal,
                              refine_extra_params=conf.ba_refine_extra_params,
                              refine_principal_point=conf.ba_refine_principal_point,
                              num_threads=conf.num_threads)
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError on failure
        log.warning("the per-image fit of %s failed (%s: %s); its shared cameras are kept",
                    shared_dir, type(exc).__name__, exc)
        return True, f"the per-image fit failed ({type(exc).__name__})", []
    models = _keep_and_cache(split, split_dir, fingerprint, conf, manifest["num_images"],
                             time.perf_counter() - started,
                             {"keep_shared": keep_shared, "why": why})
    return keep_shared, why, models


def _registered(models: Sequence[Model]) -> int:
    """Images registered in any of ``models``."""
    return len({name for model in models for name in model.poses})


def _cameras_label(conf: ReconConf) -> str:
    if conf.camera_sharing == "size":
        return "shared by size"
    return "per image" + (", as one camera in pairs" if conf.pair_cameras == "one" else "")


def mean_reprojection_error(models: Sequence[Model]) -> float:
    """Mean reprojection error of several models, weighted by their observations."""
    weights = np.array([m.num_observations for m in models], dtype=np.float64)
    errors = np.array([m.mean_reprojection_error for m in models], dtype=np.float64)
    if weights.sum() == 0:
        return float("nan")
    return float(np.sum(weights * errors) / weights.sum())


def _reconstruct_once(image_dir: str | os.PathLike, images: list[str],
                      kpts: dict[str, np.ndarray], pair_matches: dict[PairKey, np.ndarray],
                      num_usable_pairs: int, work_dir: Path, conf: ReconConf, overwrite: bool,
                      label: str, image_sizes: Mapping[str, tuple[int, int]] | None
                      ) -> list[Model]:
    """One mapping run (cached) with ``conf``, whose camera sharing is not "auto"."""
    models_dir = work_dir / MODELS_DIR
    fingerprint = _fingerprint(images, kpts, pair_matches, conf)
    cached = None if overwrite else _cached_models(models_dir, fingerprint, conf, label)
    if cached is not None:
        return cached
    mapped = _run_mapper(image_dir, images, kpts, pair_matches, work_dir, conf, label,
                         image_sizes)
    if mapped is None:
        return []
    found, seconds = mapped
    models = _keep_and_cache(found, models_dir, fingerprint, conf, len(images), seconds)
    _log_outcome(label, models, len(images), num_usable_pairs, seconds, conf, work_dir)
    return models


def _cached_models(models_dir: Path, fingerprint: str, conf: ReconConf, label: str
                   ) -> list[Model] | None:
    """The models cached in ``models_dir`` if they were made from these inputs and options
    (same ``fingerprint``); else None (logged when the cache is stale)."""
    cached_fp = _cached_fingerprint(models_dir)
    if cached_fp == fingerprint:
        models = load_models(models_dir)
        if models is not None:
            log.info("cluster %s: loaded %d cached model(s) from %s", label, len(models),
                     models_dir)
            if not models:
                log.warning("cluster %s: the cached run found no model of %d or more "
                            "images (%s)", label, conf.min_model_size, models_dir)
            return models
    elif cached_fp is not None:
        log.info("cluster %s: inputs or options changed since %s was written; mapping "
                 "again", label, models_dir)
    return None


def _run_mapper(image_dir: str | os.PathLike, images: list[str], kpts: dict[str, np.ndarray],
                pair_matches: dict[PairKey, np.ndarray], work_dir: Path, conf: ReconConf,
                label: str, image_sizes: Mapping[str, tuple[int, int]] | None
                ) -> tuple[list[pycolmap.Reconstruction], float] | None:
    """Write the database and run pycolmap's mapper (``conf.mapper``) on it: (the
    reconstructions it found, seconds it took); None, with a warning, when pycolmap raises."""
    db_path = work_dir / DATABASE_FILE
    _remove_leftovers(work_dir)
    build_database(db_path, image_dir, images, kpts, pair_matches, conf, image_sizes)
    mapping_dir = Path(tempfile.mkdtemp(prefix=_MAPPING_TMP_PREFIX, dir=work_dir))
    started = time.perf_counter()
    try:
        # The global mapper warns on every cluster that few cameras have focal-length
        # priors: never true here (no EXIF is read), and said once in the module doc.
        with _colmap_log_level(conf.colmap_verbose, errors_only=conf.mapper == "global"):
            if conf.mapper == "global":
                found = pycolmap.global_mapping(db_path, Path(image_dir), mapping_dir,
                                                conf.global_options())
            else:
                found = pycolmap.incremental_mapping(db_path, Path(image_dir), mapping_dir,
                                                     conf.pipeline_options(len(images)))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError on failure
        log.warning("cluster %s: pycolmap %s mapping failed in %s (%s: %s); its %d images "
                    "stay unregistered", label, conf.mapper, work_dir, type(exc).__name__, exc,
                    len(images))
        return None
    finally:
        shutil.rmtree(mapping_dir, ignore_errors=True)
    found = list(found.values())
    if conf.mapper == "global" and conf.reregister_below_points > 0 and found:
        largest = max(range(len(found)), key=lambda k: found[k].num_reg_images())
        found[largest] = _reregister_weak_images(found[largest], db_path, Path(image_dir),
                                                 work_dir, conf, label)
    seconds = time.perf_counter() - started
    limit = conf.runtime_limit(len(images)) if conf.mapper == "incremental" else -1
    if limit > 0 and seconds >= limit:
        log.warning("cluster %s: mapping stopped at its time limit (%.0f s of %d s allowed for "
                    "%d images); the models found so far are kept", label, seconds, limit,
                    len(images))
    return found, seconds


def _restore_pose(result: pycolmap.Reconstruction, original: pycolmap.Reconstruction,
                  image_id: int, new_from_old: pycolmap.Sim3d) -> None:
    """Register image ``image_id`` in ``result`` at its pose in ``original`` moved by
    ``new_from_old``, observing no 3D point (its keypoints kept), adding its camera and
    frame if ``result`` lacks them (pycolmap's output can leave out an image that observes
    nothing)."""
    source = original.image(image_id)
    cam_from_world = new_from_old.transform_camera_world(source.cam_from_world())
    if result.exists_image(image_id):
        frame_id = result.image(image_id).frame_id
        result.frame(frame_id).rig_from_world = cam_from_world  # trivial rig: rig = camera
        result.register_frame(frame_id)
        return
    if not result.exists_camera(source.camera_id):
        result.add_camera_with_trivial_rig(original.camera(source.camera_id))
    image = pycolmap.Image(name=source.name, camera_id=source.camera_id, image_id=image_id,
                           points2D=pycolmap.Point2DList(
                               [pycolmap.Point2D(p.xy) for p in source.points2D]))
    result.add_image_with_trivial_frame(image, cam_from_world)


def weakly_supported_images(rec: pycolmap.Reconstruction, below_points: int) -> list[int]:
    """Ids of the registered images of ``rec`` that observe fewer than ``below_points`` of
    its 3D points."""
    return sorted(image_id for image_id in rec.reg_image_ids()
                  if rec.image(image_id).num_points3D < below_points)


def _reregister_weak_images(rec: pycolmap.Reconstruction, db_path: Path, image_dir: Path,
                            work_dir: Path, conf: ReconConf, label: str
                            ) -> pycolmap.Reconstruction:
    """``rec`` (a global mapper's model) with its weakly supported images registered again.

    The global mapper places every image of its view graph by rotation averaging and global
    positioning; bundle adjustment then drops the observations that do not fit, and an image
    left with a handful of 3D points (or none) keeps a pose nothing holds in place. Such
    images are taken out and COLMAP's incremental mapper, continuing from the rest of the
    model, registers them again where ``conf.reregister_min_inliers`` of their keypoints
    see its points (then triangulates and adjusts); it may register images the global
    mapper left out as well. Those it cannot register keep their global poses. The model is
    kept unchanged if the continuation fails or loses the model's other images."""
    weak = weakly_supported_images(rec, conf.reregister_below_points)
    if not weak:
        return rec
    names = {rec.image(image_id).name for image_id in weak}
    kept_ids = set(rec.reg_image_ids()) - set(weak)
    if len(kept_ids) < max(conf.min_model_size, rec.num_reg_images() / 2):
        # Most of the model is weak: too little of it is left to register against.
        log.info("cluster %s: %d of %d images held with under %d points; the global model "
                 "is kept as it is", label, len(weak), rec.num_reg_images(),
                 conf.reregister_below_points)
        return rec
    trimmed = pycolmap.Reconstruction(rec)
    for image_id in weak:
        trimmed.deregister_frame(trimmed.image(image_id).frame_id)
    options = replace(conf, mapper="incremental",
                      abs_pose_min_num_inliers=conf.reregister_min_inliers
                      ).pipeline_options(rec.num_images())
    options.multiple_models = False
    folder = Path(tempfile.mkdtemp(prefix=_MAPPING_TMP_PREFIX, dir=work_dir))
    try:
        (folder / "in").mkdir()
        (folder / "out").mkdir()
        trimmed.write(folder / "in")
        with _colmap_log_level(conf.colmap_verbose):
            continued = pycolmap.incremental_mapping(db_path, image_dir, folder / "out",
                                                     options, input_path=folder / "in")
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError on failure
        log.warning("cluster %s: registering %d weakly supported image(s) again failed "
                    "(%s: %s); the global model is kept as it was", label, len(weak),
                    type(exc).__name__, exc)
        return rec
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = max(continued.values(), key=lambda r: r.num_reg_images(), default=None)
    if result is None or not kept_ids <= set(result.reg_image_ids()):
        log.warning("cluster %s: registering %d weakly supported image(s) again lost the "
                    "model; it is kept as it was", label, len(weak))
        return rec
    back = sorted(names & {result.image(i).name for i in result.reg_image_ids()})
    added = result.num_reg_images() - len(kept_ids) - len(back)
    # An image that does not register again keeps the pose the global mapper gave it (the
    # continuation adjusts the rest of the model in place, it does not move its frame): it
    # is no worse placed than before, and now and then near enough to count.
    missing = [image_id for image_id in weak
               if not (result.exists_image(image_id) and result.image(image_id).has_pose)]
    if missing:
        # The continuation's bundle adjustment may move and scale the model a little: the
        # similarity of the images both hold carries the old poses over.
        common = sorted(kept_ids)
        new_from_old = None
        if len(common) >= 3:
            with contextlib.suppress(ValueError, RuntimeError):
                new_from_old = pycolmap.estimate_sim3d(
                    np.array([rec.image(i).projection_center() for i in common]),
                    np.array([result.image(i).projection_center() for i in common]))
        if new_from_old is None:
            log.warning("cluster %s: the re-registered model cannot be aligned to the global "
                        "one (cameras in a line?); the global model is kept as it was", label)
            return rec
        for image_id in missing:
            _restore_pose(result, rec, image_id, new_from_old)
    log.info("cluster %s: %d image(s) the global model held with under %d points taken out, "
             "%d registered again (the others keep their poses)%s", label, len(weak),
             conf.reregister_below_points, len(back), f", {added} more" if added else "")
    return result


def _keep_and_cache(found: list[pycolmap.Reconstruction], models_dir: Path, fingerprint: str,
                    conf: ReconConf, num_images: int, seconds: float,
                    extra: Mapping | None = None) -> list[Model]:
    """The reconstructions registering ``conf.min_model_size`` or more images, largest first
    (then most 3D points), as Models; written with their manifest (and ``extra`` in it) to
    ``models_dir``."""
    reconstructions = [rec for rec in found if rec.num_reg_images() >= conf.min_model_size]
    reconstructions.sort(key=lambda r: (-r.num_reg_images(), -r.num_points3D()))
    models = [_model_from_reconstruction(rec) for rec in reconstructions]
    manifest = {
        "fingerprint": fingerprint,
        "cache_key": conf.cache_key(),
        "conf": asdict(conf),
        "num_images": num_images,
        "mapping_seconds": round(seconds, 3),
        "models": [{"num_registered": m.num_registered, "num_points3D": m.num_points3D}
                   for m in models],
        **(extra or {}),
    }
    _write_models(models_dir, reconstructions, manifest)
    return models


def _log_outcome(label: str, models: list[Model], num_images: int, num_usable_pairs: int,
                 seconds: float, conf: ReconConf, work_dir: Path) -> None:
    if not models:
        log.warning("cluster %s: the mapper found no model of %d or more images (%d image(s),"
                    " %d usable pair(s), %s); its images stay unregistered", label,
                    conf.min_model_size, num_images, num_usable_pairs, work_dir)
        return
    registered = _registered(models)
    log.info("cluster %s: %s mapper, cameras %s, %d model(s) (%s images), %d/%d images "
             "registered, %.1f s", label, conf.mapper, _cameras_label(conf),
             len(models),
             "+".join(str(m.num_registered) for m in models), registered, num_images, seconds)


# =========================================================================== poses
def poses_for_images(models: Sequence[Model], images: Sequence[str]
                     ) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """Image name -> (model_index, R_cw (3, 3), t_cw (3,)) for the registered images.

    An image registered in several models takes its pose from the one registering the most
    images (ties: the earlier in ``models``); ``model_index`` indexes ``models``. Images
    registered nowhere are absent.
    """
    order = sorted(range(len(models)), key=lambda k: (-models[k].num_registered, k))
    out = {}
    for name in images:
        for k in order:
            if name in models[k].poses:
                R_cw, t_cw = models[k].poses[name]
                out[name] = (k, R_cw, t_cw)
                break
    return out


def placements(models: Sequence[Model], images: Sequence[str]) -> dict[str, Placement]:
    """Image name -> (model index, K, R_cw, t_cw) for the images of ``images`` the models
    register, each from the model :func:`poses_for_images` takes its pose from."""
    return {name: (k, models[k].intrinsics[name], R_cw, t_cw)
            for name, (k, R_cw, t_cw) in poses_for_images(models, images).items()}


def pinhole_keypoints(models: Sequence[Model], keypoints: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
    """Each image's keypoints (OpenCV pixels) with the lens distortion of the model that
    places it (:func:`poses_for_images`) taken out: where a pinhole camera of the image's K
    would have seen them, so that the epipolar geometry of K and the poses applies to them
    (mapper_choice.held_images). Images no model registers, or registered without camera
    parameters, keep their keypoints as given; a point the camera model cannot undistort
    comes back as nan (it explains nothing)."""
    corrected = dict(keypoints)
    for name, (k, _, _) in poses_for_images(models, list(keypoints)).items():
        if name not in models[k].cameras:
            continue
        camera_model, width, height, params = models[k].cameras[name]
        points = np.asarray(keypoints[name], np.float64).reshape(-1, 2)
        if camera_model in ("SIMPLE_PINHOLE", "PINHOLE") or not len(points):
            continue  # nothing to take out
        camera = pycolmap.Camera(model=camera_model, width=width, height=height,
                                 params=list(params))
        normalized = np.asarray(camera.cam_from_img(points + OPENCV_TO_COLMAP_PIXEL),
                                np.float64).reshape(-1, 2)
        K = models[k].intrinsics[name]
        corrected[name] = normalized @ K[:2, :2].T + K[:2, 2]
    return corrected
