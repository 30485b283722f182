"""Synthetic data in the exact folder layout of the Image Matching Challenge 2025.

The pipeline has to run end to end without the competition data, so this module renders
small photo-like datasets with known poses:

- a *scene* is a handful of textured rectangles in 3D (a ground plane plus walls, boxes and
  tilted panels), each with its own procedural texture, so local features match between views;
- cameras are pinhole cameras on an arc around the structure, looking at it;
- images are rendered with exact projective geometry (texture-to-image homographies, a
  per-pixel z-buffer), then given per-image photometric changes and noise.

Conventions (those of ``src.geometry``): world z is up; poses are world-to-camera,
``x_cam = R_cw @ X + t_cw`` with ``t_cw = -R_cw @ C``; the camera frame is OpenCV's (+x right,
+y down, +z forward); pixel coordinates have integer values at pixel centres; intrinsics
``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]``. Distances are in arbitrary "world units".

Layout written under ``root`` (see :func:`generate_demo_dataset`)::

    train/<dataset>/<image>.png     test/<dataset>/<image>.png
    train_labels.csv  train_thresholds.csv  test_labels.csv  test_thresholds.csv
    sample_submission.csv  calibration.csv  demo_spec.json

Run ``python -m src.demo_data OUT_DIR [--seed N ...]`` to write one from the shell;
``python main.py`` gets its data through :func:`ensure_data_dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import numbers
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.geometry import camera_centers, look_at_rotation
from src.data_io import (LABEL_COLUMNS, atomic_path, format_numbers, write_csv_atomic,
    write_image_rgb)
from src.submission import OUTLIER_SCENE, SUBMISSION_COLUMNS, default_image_id

log = logging.getLogger(__name__)

__all__ = [
    "DemoSpec",
    "Plane",
    "Scene",
    "generate_demo_dataset",
    "ensure_data_dir",
    "demo_folder",
    "read_demo_spec",
    "make_scene",
    "sample_cameras",
    "intrinsics",
    "render_view",
    "surface_index_map",
    "photometric_jitter",
    "scene_thresholds",
    "THRESHOLD_FRACTIONS",
    "GENERATOR_VERSION",
]

# Bump when the rendering changes, so cached demo data made by an older generator is redone.
GENERATOR_VERSION = 1
SPEC_FILE = "demo_spec.json"
# Present while a generation is under way; tells a later call the half-written folder is ours.
INCOMPLETE_MARKER = ".demo_incomplete"
OUTPUT_FILES = ("train_labels.csv", "train_thresholds.csv", "test_labels.csv",
                "test_thresholds.csv", "sample_submission.csv", "calibration.csv")
OUTPUT_DIRS = ("train", "test")
THRESHOLD_COLUMNS = ["dataset", "scene", "thresholds"]
CALIBRATION_COLUMNS = ["dataset", "scene", "image", "camera_intrinsics", "width", "height"]
# Thresholds as fractions of the scene's median camera distance to the cameras' mean centre.
THRESHOLD_FRACTIONS = np.array([0.005, 0.01, 0.02, 0.05, 0.10, 0.20])

# Seed-stream tags: each random decision draws from its own stream, so e.g. asking for more
# test views leaves the training scenes and images unchanged.
_TRAIN_SCENE, _TEST_SCENE, _OUTLIER_SCENE = 1, 2, 3
_TRAIN_CAMERAS, _TEST_CAMERAS, _OUTLIER_CAMERAS = 4, 5, 6
_JITTER, _SHUFFLE, _DIFFICULTY, _SEEN_PICK = 7, 8, 9, 10
_SPLIT_TRAIN, _SPLIT_TEST = 0, 1


# =========================================================================== the spec
@dataclass(frozen=True)
class DemoSpec:
    """What to generate (defaults in brackets). All counts are integers.

    image_width, image_height: size of every image, pixels [256, 192].
    train_datasets: number of training datasets ``demo_train_a``, ``demo_train_b``, ... [2].
    scenes_per_train_dataset: scenes mixed in each training dataset [2].
    train_views_per_scene: images of each training scene [24].
    test_datasets: number of test datasets ``demo_test_a``, ... [2].
    test_seen_scenes: per test dataset, scenes taken from training: new views of the same
        geometry, in the same world frame and under the same scene name [1].
    test_unseen_scenes: per test dataset, scenes never seen in training [1].
    test_views_per_scene: images of each scene in a test dataset [10].
    outliers_per_dataset: images of one-off scenes (scene ``outliers``, no pose) in every
        dataset, training and test [3].
    seed: seed of every random choice; the same spec gives byte-identical output [7].
    """

    image_width: int = 256
    image_height: int = 192
    train_datasets: int = 2
    scenes_per_train_dataset: int = 2
    train_views_per_scene: int = 24
    test_datasets: int = 2
    test_seen_scenes: int = 1
    test_unseen_scenes: int = 1
    test_views_per_scene: int = 10
    outliers_per_dataset: int = 3
    seed: int = 7

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"DemoSpec.{f.name} must be an integer, got {value!r}")
            object.__setattr__(self, f.name, int(value))  # plain int, so it goes into JSON
        minimum = {"image_width": 32, "image_height": 32, "train_datasets": 1,
                   "scenes_per_train_dataset": 1, "train_views_per_scene": 2,
                   "test_datasets": 1, "test_seen_scenes": 0, "test_unseen_scenes": 0,
                   "test_views_per_scene": 2, "outliers_per_dataset": 0, "seed": 0}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"DemoSpec.{name} must be >= {low}, got {getattr(self, name)}")
        if self.image_width > 4096 or self.image_height > 4096:
            raise ValueError(f"DemoSpec image size {self.image_width}x{self.image_height} is "
                             "too large for demo data (max 4096)")
        if self.test_seen_scenes + self.test_unseen_scenes < 1:
            raise ValueError("DemoSpec: each test dataset needs at least one scene "
                             "(test_seen_scenes + test_unseen_scenes >= 1)")
        n_train_scenes = self.train_datasets * self.scenes_per_train_dataset
        if self.test_seen_scenes > n_train_scenes:
            raise ValueError(f"DemoSpec.test_seen_scenes={self.test_seen_scenes} but training "
                             f"has only {n_train_scenes} scene(s) to take them from")

    def to_json_dict(self) -> dict:
        """The spec as written to ``demo_spec.json`` (with the generator version)."""
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


def read_demo_spec(root: str | Path) -> DemoSpec | None:
    """The spec recorded in ``root/demo_spec.json``; None if missing, unreadable or written
    by another generator version (all of which mean: regenerate)."""
    path = Path(root) / SPEC_FILE
    try:
        data = json.loads(path.read_text())
        if data.pop("generator_version", None) != GENERATOR_VERSION:
            return None
        return DemoSpec(**data)
    except (OSError, ValueError, TypeError):
        return None


# =========================================================================== scenes
@dataclass(frozen=True, eq=False)
class Plane:
    """A textured rectangle in world coordinates.

    The rectangle is ``{corner + s * edge_u + r * edge_v : s, r in [0, 1]}`` (world units,
    vectors (3,)). ``texture`` is uint8 RGB (H, W, 3); its column j covers s in [j/W, (j+1)/W]
    and row i covers r in [i/H, (i+1)/H], i.e. edge_u runs left to right along the texture and
    edge_v top to bottom. ``is_ground`` marks the ground plane, which does not count as
    "structure" when checking what a camera sees.
    """

    corner: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    texture: np.ndarray
    is_ground: bool = False

    @cached_property
    def corners(self) -> np.ndarray:
        """The 4 corners (4, 3) in order: corner, +u, +u+v, +v."""
        o, a, b = self.corner, self.edge_u, self.edge_v
        return np.stack([o, o + a, o + a + b, o + b])

    @cached_property
    def normal(self) -> np.ndarray:
        """Unit normal (3,), along edge_u x edge_v."""
        n = np.cross(self.edge_u, self.edge_v)
        return n / np.linalg.norm(n)

    def point(self, s: np.ndarray, r: np.ndarray) -> np.ndarray:
        """World points (..., 3) at rectangle coordinates s, r in [0, 1]."""
        s = np.asarray(s, float)[..., None]
        r = np.asarray(r, float)[..., None]
        return self.corner + s * self.edge_u + r * self.edge_v

    @cached_property
    def texture_pyramid(self) -> tuple[np.ndarray, ...]:
        """Float32 mip levels of the texture; level L is pyrDown'ed L times (pixel i of level
        L is centred on pixel i * 2**L of level 0)."""
        levels = [self.texture.astype(np.float32)]
        while min(levels[-1].shape[:2]) >= 8:
            levels.append(cv2.pyrDown(levels[-1]))
        return tuple(levels)


@dataclass(frozen=True, eq=False)
class Scene:
    """Textured planes plus where cameras may stand to look at them.

    planes: the surfaces, planes[0] is the ground.
    target: (3,) world point near the structure's centre that cameras look at.
    arc_center_deg, arc_span_deg: cameras stand at azimuths (about ``target``, degrees from
        world +x) within ``arc_center_deg +- arc_span_deg / 2``.
    distance_range, height_range: horizontal distance from ``target`` and height above the
        ground of camera centres, world units.
    sky_zenith, sky_horizon, far_ground: RGB colours (0-255 floats) of the background.
    """

    planes: tuple[Plane, ...]
    target: np.ndarray
    arc_center_deg: float
    arc_span_deg: float
    distance_range: tuple[float, float]
    height_range: tuple[float, float]
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    far_ground: np.ndarray


_SHAPE_KINDS = ("circle", "rectangle", "line", "ellipse", "polygon", "checker", "text",
                "stripes")
_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#&%@"
# Dirichlet concentration of each scene's mix of shapes: low values make scenes differ more;
# text is drawn less often as it is the slowest shape to draw
_STYLE_CONCENTRATION = np.array([0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.4, 0.8])


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV rows (N, 3) with H in degrees [0, 360), S and V in [0, 1] -> RGB floats 0-255."""
    hsv = np.asarray(hsv, np.float32).reshape(1, -1, 3)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3) * 255.0


def _make_palette(rng: np.random.Generator) -> np.ndarray:
    """Colours (N, 3), RGB 0-255, of one scene: a dominant hue family plus a few accents,
    over a range of brightness so textures have contrast."""
    base_hue = rng.uniform(0, 360)
    saturation = rng.uniform(0.25, 0.85)
    n_main, n_accent = 5, 2
    hues = np.concatenate([base_hue + rng.normal(0, 18, n_main),
                           base_hue + rng.choice([120, 180, 240]) + rng.normal(0, 15, n_accent)])
    sats = np.clip(saturation + rng.normal(0, 0.15, hues.size), 0.05, 1.0)
    values = np.concatenate([np.linspace(0.15, 0.95, n_main)[rng.permutation(n_main)],
                             rng.uniform(0.5, 0.95, n_accent)])
    palette = _hsv_to_rgb(np.stack([hues % 360, sats, values], axis=1))
    # one near-black and one near-white: strong edges for the feature detector
    return np.concatenate([palette, [[20.0, 20.0, 22.0], [238.0, 236.0, 230.0]]])


def _procedural_texture(rng: np.random.Generator, height: int, width: int,
                        palette: np.ndarray, style: np.ndarray,
                        max_shape: float | None = None) -> np.ndarray:
    """A random texture, uint8 RGB (height, width, 3).

    Multi-scale noise on a base colour, then many shapes drawn with cv2 in palette colours;
    ``style`` (len(_SHAPE_KINDS),) are the probabilities of each kind of shape, whose sizes
    (texels) are log-uniform from 3 to ``max_shape`` (a sixth of the texture when None).
    """
    # smooth colour variation at several scales, so even bare areas are not flat: noise
    # grids of 96, 24 and 6 texel cells, each upsampled onto the next finer one
    noise = np.zeros((2, 2, 3), np.float32)
    for cell, amplitude in ((96, 18.0), (24, 10.0), (6, 6.0)):
        grid_h, grid_w = max(2, height // cell), max(2, width // cell)
        noise = cv2.resize(noise, (grid_w, grid_h), interpolation=cv2.INTER_CUBIC)
        noise += amplitude * rng.standard_normal((grid_h, grid_w, 3), dtype=np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    noise += palette[rng.integers(len(palette))].astype(np.float32)
    noise += rng.integers(-4, 5, (height, width, 1), dtype=np.int8)  # grey texel grain
    # OpenCV 5 draws text on 8-bit images only
    img = np.clip(noise, 0, 255, out=noise).astype(np.uint8)

    # every random number of the shapes drawn at once (far faster than one call each)
    max_shape = max(4.0, min(height, width) / 6 if max_shape is None else max_shape)
    n = int(height * width / rng.uniform(700, 1300))
    kinds = rng.choice(len(_SHAPE_KINDS), size=n, p=style)
    centres = (rng.random((n, 2)) * [width, height]).astype(int)
    # log-uniform sizes: features at every scale of the image pyramid
    sizes = np.exp(rng.uniform(np.log(3), np.log(max_shape), n))
    thicks = rng.integers(1, 4, n)
    colours = np.clip(np.rint(palette[rng.integers(len(palette), size=(n, 2))]
                              + rng.normal(0, 12, (n, 2, 3))), 0, 255).astype(int).tolist()
    params = rng.random((n, 4))  # kind-specific shape parameters in [0, 1)
    glyph_ids = rng.integers(len(_GLYPHS), size=(n, 3))
    for k in range(n):
        kind = _SHAPE_KINDS[kinds[k]]
        cx, cy = int(centres[k, 0]), int(centres[k, 1])
        size, thick, p = float(sizes[k]), int(thicks[k]), params[k]
        colour, colour2 = colours[k]
        fill = -1 if p[3] < 0.6 else thick
        if kind == "circle":
            cv2.circle(img, (cx, cy), int(size), colour, fill, cv2.LINE_AA)
        elif kind == "rectangle":
            w, h = size * (0.5 + 1.5 * p[0]), size * (0.5 + 1.5 * p[1])
            cv2.rectangle(img, (cx, cy), (int(cx + w), int(cy + h)), colour, fill, cv2.LINE_AA)
        elif kind == "line":
            angle, length = np.pi * p[0], size * (2 + 3 * p[1])
            end = (int(cx + length * np.cos(angle)), int(cy + length * np.sin(angle)))
            cv2.line(img, (cx, cy), end, colour, thick, cv2.LINE_AA)
        elif kind == "ellipse":
            axes = (int(size), int(size * (0.2 + 0.6 * p[0])))
            cv2.ellipse(img, (cx, cy), axes, 180 * p[1], 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == "polygon":
            n_vertices = 3 + int(3 * p[0])
            angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
            radii = size * rng.uniform(0.4, 1.2, n_vertices)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(img, [points.astype(np.int32)], colour, cv2.LINE_AA)
        elif kind == "checker":
            cell = 3 + int(8 * p[0])
            nx, ny = 2 + int(3 * p[1]), 2 + int(3 * p[2])
            cv2.rectangle(img, (cx, cy), (cx + nx * cell - 1, cy + ny * cell - 1), colour2, -1)
            cells = [np.array([[x, y], [x + cell - 1, y], [x + cell - 1, y + cell - 1],
                               [x, y + cell - 1]], np.int32)
                     for i in range(nx) for j in range(ny) if (i + j) % 2 == 0
                     for x, y in [(cx + i * cell, cy + j * cell)]]
            cv2.fillPoly(img, cells, colour)
        elif kind == "text":
            glyphs = "".join(_GLYPHS[g] for g in glyph_ids[k, :1 + int(3 * p[0])])
            scale = min(size / 12.0 + 0.3, 2.0)
            cv2.putText(img, glyphs, (cx, cy), int(8 * p[1]), scale, colour,
                        max(1, int(scale)), cv2.LINE_AA)
        else:  # stripes: a patch of parallel lines
            angle, spacing, count = np.pi * p[0], 3 + 5 * p[1], 3 + int(5 * p[2])
            direction = np.array([np.cos(angle), np.sin(angle)])
            across = np.array([-direction[1], direction[0]])
            starts = np.array([cx, cy]) + np.arange(count)[:, None] * spacing * across
            segments = np.stack([starts, starts + 2 * size * direction], axis=1)
            cv2.polylines(img, list(segments.astype(np.int32)), False, colour, thick,
                          cv2.LINE_AA)
    return img


def _texture_size(extent_u: float, extent_v: float, texels_per_unit: float,
                  limits: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in texels for a rectangle of the given world size, texels ~square."""
    width = int(np.clip(round(extent_u * texels_per_unit), *limits))
    height = int(np.clip(round(extent_v * texels_per_unit), *limits))
    return height, width


def _horizontal(yaw: float) -> np.ndarray:
    """Unit vector in the ground plane at angle ``yaw`` (radians) from world +x."""
    return np.array([np.cos(yaw), np.sin(yaw), 0.0])


def _structure_rectangles(rng: np.random.Generator, kind: str, position: np.ndarray
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rectangles (corner, edge_u, edge_v) of one structure standing at ``position`` (x, y).

    Vertical faces have edge_v pointing down, so their textures stand upright in images.
    """
    up = np.array([0.0, 0.0, 1.0])
    yaw = rng.uniform(0, 2 * np.pi)
    along, across = _horizontal(yaw), _horizontal(yaw + np.pi / 2)
    base = np.array([position[0], position[1], 0.0])
    if kind == "wall":
        width, height = rng.uniform(1.5, 3.5), rng.uniform(1.0, 2.5)
        corner = base - along * width / 2 + up * height
        return [(corner, along * width, -up * height)]
    if kind == "box":
        size_a, size_b, height = rng.uniform(0.6, 1.8), rng.uniform(0.6, 1.8), rng.uniform(0.5, 2.0)
        lift = up * rng.choice([0.0, rng.uniform(0.0, 0.6)])  # some float above the ground
        rectangles = []
        for normal, half_depth, face_width in ((along, size_a / 2, size_b),
                                               (-along, size_a / 2, size_b),
                                               (across, size_b / 2, size_a),
                                               (-across, size_b / 2, size_a)):
            right = np.cross(up, normal)  # seen from outside, the face's left-to-right
            face_centre = base + lift + normal * half_depth + up * height / 2
            corner = face_centre - right * face_width / 2 + up * height / 2
            rectangles.append((corner, right * face_width, -up * height))
        top = base + lift + up * height - along * size_a / 2 - across * size_b / 2
        rectangles.append((top, along * size_a, across * size_b))
        return rectangles
    # tilted panel: leaning back by `tilt` from vertical, its lower edge above the ground
    width, height = rng.uniform(1.0, 2.5), rng.uniform(0.8, 1.8)
    tilt = np.radians(rng.uniform(20, 70))
    down = -np.cos(tilt) * up + np.sin(tilt) * across
    bottom_height = rng.uniform(0.1, 0.8)
    corner = base + up * bottom_height - down * height - along * width / 2
    return [(corner, along * width, down * height)]


def make_scene(rng: np.random.Generator, n_structures: int | None = None,
               texels_per_unit: float | None = None) -> Scene:
    """A random scene: a textured ground plane plus ``n_structures`` (3-6 when None) walls,
    boxes and tilted panels, each face with its own texture, and the camera arc around them.

    Scenes differ in palette, texture style (mix of shapes), layout, sky and camera arc, so
    they also differ in overall appearance. ``texels_per_unit`` sets the texture resolution of
    the structures (random 110-170 when None).
    """
    palette = _make_palette(rng)
    style = rng.dirichlet(_STYLE_CONCENTRATION)
    texels_per_unit = rng.uniform(110, 170) if texels_per_unit is None else texels_per_unit
    n_structures = int(rng.integers(3, 7)) if n_structures is None else n_structures
    layout_radius = rng.uniform(1.5, 3.0)

    kinds = rng.choice(["wall", "box", "panel"], size=n_structures, p=[0.35, 0.4, 0.25])
    rectangles = []
    for kind in kinds:
        # sqrt: uniform over the disc, so some structures stand in front of others
        radius = layout_radius * np.sqrt(rng.uniform(0, 1))
        position = radius * _horizontal(rng.uniform(0, 2 * np.pi))[:2]
        rectangles.extend(_structure_rectangles(rng, str(kind), position))

    structure_corners = np.concatenate(
        [np.stack([o, o + a, o + a + b, o + b]) for o, a, b in rectangles])
    centre_xy = structure_corners[:, :2].mean(axis=0)
    extent = float(np.max(np.linalg.norm(structure_corners[:, :2] - centre_xy, axis=1)))
    target = np.array([centre_xy[0], centre_xy[1], rng.uniform(0.5, 1.1)])
    near = extent * 1.1 + 1.0
    distance_range = (near, near + rng.uniform(1.0, 3.0))

    # ground: square around the structure reaching past the cameras
    half = distance_range[1] + rng.uniform(1.5, 3.0)
    ground_corner = np.array([centre_xy[0] - half, centre_xy[1] - half, 0.0])
    ground_palette = np.clip(palette * rng.uniform(0.6, 1.0) + rng.uniform(-30, 30, 3), 0, 255)
    ground_style = rng.dirichlet(_STYLE_CONCENTRATION)
    # the ground is large and seen up close: many small shapes rather than a few huge ones
    ground_texture = _procedural_texture(rng, 1024, 1024, ground_palette, ground_style,
                                         max_shape=rng.uniform(24, 48))
    planes = [Plane(ground_corner, np.array([2 * half, 0, 0]), np.array([0, 2 * half, 0]),
                    ground_texture, is_ground=True)]
    for corner, edge_u, edge_v in rectangles:
        h, w = _texture_size(float(np.linalg.norm(edge_u)), float(np.linalg.norm(edge_v)),
                             texels_per_unit, (96, 512))
        texture = _procedural_texture(rng, h, w, palette, style)
        planes.append(Plane(corner, edge_u, edge_v, texture))

    sky_hue = rng.uniform(180, 260) if rng.random() < 0.7 else rng.uniform(0, 60)
    sky_zenith = _hsv_to_rgb([[sky_hue, rng.uniform(0.2, 0.7), rng.uniform(0.55, 0.9)]])[0]
    sky_horizon = _hsv_to_rgb([[sky_hue, rng.uniform(0.05, 0.25), rng.uniform(0.8, 1.0)]])[0]
    far_ground = np.clip(ground_palette.mean(axis=0) * rng.uniform(0.8, 1.1), 0, 255)
    return Scene(planes=tuple(planes), target=target,
                 arc_center_deg=float(rng.uniform(0, 360)),
                 arc_span_deg=float(rng.uniform(90, 180)),
                 distance_range=distance_range,
                 height_range=(float(rng.uniform(1.0, 1.8)), float(rng.uniform(2.5, 4.0))),
                 sky_zenith=sky_zenith, sky_horizon=sky_horizon, far_ground=far_ground)


# =========================================================================== rendering
def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (3, 3): focal length in pixels, principal point at (width/2, height/2)."""
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def _rescale_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
    """K for the same camera with an image resized by ``factor``; keeps pixel centres at
    integers (x_new = factor * (x + 0.5) - 0.5)."""
    shift = 0.5 * factor - 0.5
    return np.array([[factor, 0, shift], [0, factor, shift], [0, 0, 1.0]]) @ K


def _clip_in_front(points_cam: np.ndarray, near: float = 1e-6) -> np.ndarray:
    """Clip a convex polygon (N, 3) in camera coordinates to z >= near (Sutherland-Hodgman)."""
    if np.all(points_cam[:, 2] >= near):
        return points_cam
    kept = []
    n = len(points_cam)
    for i in range(n):
        p, q = points_cam[i], points_cam[(i + 1) % n]
        if p[2] >= near:
            kept.append(p)
        if (p[2] >= near) != (q[2] >= near):
            s = (near - p[2]) / (q[2] - p[2])
            kept.append(p + s * (q - p))
    return np.array(kept).reshape(-1, 3)


@dataclass(frozen=True)
class _PlaneView:
    """How one plane projects into one image (pixel coordinates of the whole image).

    box: (x0, y0, x1, y1) pixel box that holds the visible part of the rectangle;
    H: (3, 3) homography from texel coordinates (OpenCV convention: texel (0, 0) centred at
    (0, 0)) of the level-0 texture to pixel coordinates;
    inv_depth_coeffs: (3,) c with 1/z = c0 x + c1 y + c2 at pixel (x, y): for a plane the
    inverse depth is affine in the pixel coordinates, n_c . K^-1 p / d_c.
    """

    box: tuple[int, int, int, int]
    H: np.ndarray
    inv_depth_coeffs: np.ndarray


def _project_plane(plane: Plane, K: np.ndarray, R_cw: np.ndarray, t_cw: np.ndarray,
                   width: int, height: int) -> _PlaneView | None:
    """Projection of a plane into a width x height image; None if it cannot be seen."""
    tex_h, tex_w = plane.texture.shape[:2]
    a = plane.edge_u / tex_w  # world step per texel column
    b = plane.edge_v / tex_h
    origin = plane.corner + 0.5 * a + 0.5 * b  # centre of texel (0, 0)
    normal_c = R_cw @ plane.normal
    offset_c = float(normal_c @ (R_cw @ plane.corner + t_cw))  # plane: n_c . x = offset_c
    if abs(offset_c) < 1e-12:
        return None  # the camera centre lies in the plane: it is seen edge-on

    # pixel box: project the part of the rectangle in front of the camera
    visible = _clip_in_front(plane.corners @ R_cw.T + t_cw)
    if len(visible) < 3:
        return None
    projected = visible @ K.T
    xy = projected[:, :2] / projected[:, 2:3]
    low = np.floor(np.clip(xy.min(axis=0), -2, [width + 1, height + 1])).astype(int) - 1
    high = np.ceil(np.clip(xy.max(axis=0), -2, [width + 1, height + 1])).astype(int) + 2
    x0, y0 = max(int(low[0]), 0), max(int(low[1]), 0)
    x1, y1 = min(int(high[0]), width), min(int(high[1]), height)
    if x0 >= x1 or y0 >= y1:
        return None
    H = K @ np.stack([R_cw @ a, R_cw @ b, R_cw @ origin + t_cw], axis=1)
    inv_depth_coeffs = np.linalg.solve(K.T, normal_c) / offset_c  # K^-T n_c / d_c
    return _PlaneView((x0, y0, x1, y1), H, inv_depth_coeffs)


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _plane_coverage(plane: Plane, view: _PlaneView) -> tuple[np.ndarray, np.ndarray]:
    """Over the view's box: inverse depth (float32) and whether the pixel sees the plane's
    rectangle in front of the camera (bool)."""
    x0, y0, x1, y1 = view.box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    c = [float(x) for x in view.inv_depth_coeffs]  # Python floats keep the math float32
    inv_depth = c[0] * xs + c[1] * ys + c[2]
    # rectangle test: warp a 2x2 texture stretched over the rectangle, nearest neighbour,
    # zero outside (texel coordinate u = s (u' + 1/2) - 1/2 with s = size / 2)
    tex_h, tex_w = plane.texture.shape[:2]
    stretch = np.array([[tex_w / 2, 0, tex_w / 4 - 0.5], [0, tex_h / 2, tex_h / 4 - 0.5],
                        [0, 0, 1.0]])
    mask = cv2.warpPerspective(np.ones((2, 2), np.uint8),
                               _translation(-x0, -y0) @ view.H @ stretch, (x1 - x0, y1 - y0),
                               flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
    return inv_depth, (mask > 0) & (inv_depth > 0)


_TILE = 64  # render_view works on tiles of this many pixels a side


def _mip_level_map(view: _PlaneView, max_level: int, step: int = 8) -> np.ndarray:
    """Mip level over the view's box, float32 (h, w) in [0, max_level]: log2 of the longest
    texel step per pixel step. Smooth, so evaluated every ``step`` pixels and interpolated."""
    x0, y0, x1, y1 = view.box
    Hinv = np.linalg.inv(view.H)
    xs = x0 + np.arange(0, x1 - x0 + step, step, dtype=np.float64)[None, :]
    ys = y0 + np.arange(0, y1 - y0 + step, step, dtype=np.float64)[:, None]
    q2 = Hinv[2, 0] * xs + Hinv[2, 1] * ys + Hinv[2, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = (Hinv[0, 0] * xs + Hinv[0, 1] * ys + Hinv[0, 2]) / q2
        v = (Hinv[1, 0] * xs + Hinv[1, 1] * ys + Hinv[1, 2]) / q2
        # d(u, v)/dx = (Hinv[:2, 0] - (u, v) Hinv[2, 0]) / q2, the same for y
        step_x = (Hinv[0, 0] - u * Hinv[2, 0]) ** 2 + (Hinv[1, 0] - v * Hinv[2, 0]) ** 2
        step_y = (Hinv[0, 1] - u * Hinv[2, 1]) ** 2 + (Hinv[1, 1] - v * Hinv[2, 1]) ** 2
        level = 0.5 * np.log2(np.maximum(step_x, step_y) / (q2 * q2))
    level = np.nan_to_num(np.clip(level, 0, max_level), nan=max_level).astype(np.float32)
    grid_h, grid_w = level.shape
    # grid point i sits at pixel i * step; INTER_LINEAR puts it at i * step + (step - 1) / 2,
    # a few pixels off, which does not matter for a blur level
    dense = cv2.resize(level, (grid_w * step, grid_h * step), interpolation=cv2.INTER_LINEAR)
    return dense[:y1 - y0, :x1 - x0]


def _background(scene: Scene, K: np.ndarray, R_cw: np.ndarray, width: int, height: int
                ) -> np.ndarray:
    """Smooth sky above the horizon and far ground below, float32 RGB (height, width, 3)."""
    # it is smooth, so compute it on a 4x smaller grid and interpolate
    small_w, small_h = max(2, width // 4), max(2, height // 4)
    K_small = _rescale_intrinsics(K, small_w / width)
    xs, ys = np.meshgrid(np.arange(small_w, dtype=np.float64),
                         np.arange(small_h, dtype=np.float64))
    rays_cam = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.linalg.inv(K_small).T
    rays_world = rays_cam @ R_cw  # R_cw.T @ ray, per pixel
    elevation = rays_world[..., 2] / np.linalg.norm(rays_world, axis=-1)  # sin of elevation
    sky_mix = np.clip(elevation, 0, 1)[..., None] ** 0.6
    sky = scene.sky_horizon * (1 - sky_mix) + scene.sky_zenith * sky_mix
    ground = scene.far_ground * (0.85 + 0.15 * np.clip(-elevation * 3, 0, 1))[..., None]
    # soft horizon so the background adds no sharp features
    t = np.clip((elevation + 0.03) / 0.06, 0, 1)[..., None]
    blend = t * t * (3 - 2 * t)
    small = (ground * (1 - blend) + sky * blend).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _rescale_view(view: _PlaneView, factor: int) -> _PlaneView:
    """The same projection on a grid ``factor`` times finer (pixel x -> factor (x + 1/2) - 1/2);
    the box scales with it and still holds the plane."""
    A = _rescale_intrinsics(np.eye(3), factor)
    x0, y0, x1, y1 = view.box
    return _PlaneView((factor * x0, factor * y0, factor * x1, factor * y1), A @ view.H,
                      np.linalg.solve(A.T, view.inv_depth_coeffs))


def _nearest_surface(scene: Scene, views: list[_PlaneView | None], width: int, height: int
                     ) -> np.ndarray:
    """Z-buffer: index of the nearest plane at each pixel (-1: none), int32 (height, width);
    ``views[i]`` is the projection of ``scene.planes[i]`` (None when unseen)."""
    index = np.full((height, width), -1, dtype=np.int32)
    best_inv_depth = np.zeros((height, width), np.float32)
    for i, (plane, view) in enumerate(zip(scene.planes, views)):
        if view is None:
            continue
        inv_depth, inside = _plane_coverage(plane, view)
        x0, y0, x1, y1 = view.box
        closer = inside & (inv_depth > best_inv_depth[y0:y1, x0:x1])
        np.copyto(best_inv_depth[y0:y1, x0:x1], inv_depth, where=closer)
        np.copyto(index[y0:y1, x0:x1], i, where=closer)
    return index


def surface_index_map(scene: Scene, K: np.ndarray, R_cw: np.ndarray, t_cw: np.ndarray,
                      width: int, height: int) -> np.ndarray:
    """Index into ``scene.planes`` of the nearest surface at each pixel, -1 for background.

    int32 (height, width). The z-buffer of :func:`render_view`, without textures.
    """
    views = [_project_plane(plane, K, R_cw, t_cw, width, height) for plane in scene.planes]
    return _nearest_surface(scene, views, width, height)


def _plane_colour(plane: Plane, view: _PlaneView, needed: np.ndarray) -> np.ndarray:
    """Texture colour of the plane over the view's box, float32 (h, w, 3), computed only in
    tiles where ``needed`` (bool (h, w)) holds (zero elsewhere).

    The texture is warped with ``cv2.warpPerspective`` through the texel-to-pixel homography,
    from a mip-map with trilinear weights, so that minified texture does not alias.
    """
    x0, y0, x1, y1 = view.box
    pyramid = plane.texture_pyramid
    level = _mip_level_map(view, len(pyramid) - 1)
    colour = np.zeros(needed.shape + (3,), np.float32)
    box_h, box_w = needed.shape
    for r0 in range(0, box_h, _TILE):
        for c0 in range(0, box_w, _TILE):
            r1, c1 = min(r0 + _TILE, box_h), min(c0 + _TILE, box_w)
            if not needed[r0:r1, c0:c1].any():
                continue
            # level-0 texel -> tile pixel
            to_tile = _translation(-(x0 + c0), -(y0 + r0)) @ view.H
            tile_level = level[r0:r1, c0:c1]
            for L in range(int(tile_level.min()), int(np.ceil(tile_level.max())) + 1):
                # trilinear: level L has weight 1 - |level - L| where that is positive
                weight = 1.0 - np.abs(tile_level - np.float32(L))
                np.maximum(weight, 0.0, out=weight)
                # pyrDown keeps texel i of level L centred on texel i * 2**L of level 0
                level_to_tile = to_tile * [2.0 ** L, 2.0 ** L, 1.0]
                sample = cv2.warpPerspective(pyramid[L], level_to_tile, (c1 - c0, r1 - r0),
                                             flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REFLECT_101)
                np.multiply(sample, weight[..., None], out=sample)
                colour[r0:r1, c0:c1] += sample
    return colour


def render_view(scene: Scene, K: np.ndarray, R_cw: np.ndarray, t_cw: np.ndarray,
                width: int, height: int, supersample: int = 2) -> np.ndarray:
    """Render the scene seen by one camera: uint8 RGB (height, width, 3).

    K (3, 3) pixels, R_cw (3, 3), t_cw (3,) world-to-camera. Geometry only (no photometric
    jitter) and deterministic. Which surface is nearest is decided on a grid ``supersample``
    times finer than the image (z-buffer on each plane's inverse depth, which is affine in the
    pixel coordinates), giving each pixel the fraction of it that every plane covers, so
    edges are anti-aliased. Each plane's colour is its texture warped through its
    texel-to-pixel homography ``K [R a, R b, R o + t]`` (see :func:`_plane_colour`).
    """
    K = np.asarray(K, np.float64)
    R_cw = np.asarray(R_cw, np.float64)
    t_cw = np.asarray(t_cw, np.float64).reshape(3)
    ss = int(supersample)
    views = [_project_plane(plane, K, R_cw, t_cw, width, height) for plane in scene.planes]
    index = _nearest_surface(scene, [None if v is None else _rescale_view(v, ss) for v in views],
                             width * ss, height * ss)

    def coverage(mask: np.ndarray) -> np.ndarray:
        """Fine-grid mask -> fraction of each image pixel it covers, float32."""
        h, w = mask.shape[0] // ss, mask.shape[1] // ss
        return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)

    image = _background(scene, K, R_cw, width, height) * coverage(index < 0)[..., None]
    for i, (plane, view) in enumerate(zip(scene.planes, views)):
        if view is None:
            continue
        # the fine-grid pixels of this image box (the plane's fine-grid pixels lie inside)
        x0, y0, x1, y1 = view.box
        fraction = coverage(index[ss * y0:ss * y1, ss * x0:ss * x1] == i)
        if not fraction.any():
            continue
        colour = _plane_colour(plane, view, fraction > 0)
        image[y0:y1, x0:x1] += fraction[..., None] * colour
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image photometric change of a uint8 RGB image (H, W, 3) -> uint8 (H, W, 3).

    Random contrast, brightness, gamma and colour tint (as between cameras and times of day),
    a mild blur one time in three, then Gaussian noise.
    """
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.08, 0.08)
    tint = rng.uniform(0.9, 1.1, 3)
    gamma = rng.uniform(0.8, 1.25)
    # the tone change is per channel and per value: a lookup table of 256 x 3 entries
    levels = np.arange(256.0)[:, None] / 255.0
    table = np.clip(((levels - 0.5) * contrast + 0.5 + brightness) * tint, 0.0, 1.0) ** gamma
    img = cv2.LUT(np.asarray(image, np.uint8), (table * 255.0).astype(np.float32)[:, None, :])
    if rng.random() < 1 / 3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    sigma = rng.uniform(1.0, 4.0)  # grey levels
    img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# =========================================================================== cameras
def sample_cameras(rng: np.random.Generator, scene: Scene, n: int, width: int, height: int,
                   min_coverage: float = 0.5, min_structure: float = 0.1,
                   max_tries: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random cameras on the scene's arc, each seeing the structure well.

    Focal length 0.9-1.2 x width, roll +-15 degrees, looking near ``scene.target``. A camera
    is redrawn until surfaces cover more than ``min_coverage`` of the image and the
    structures (all but the ground) at least ``min_structure``.
    Returns K (n, 3, 3), R_cw (n, 3, 3), t_cw (n, 3); world-to-camera.
    """
    # coverage is checked on a small image: it only needs a rough fraction
    check_scale = min(1.0, 80.0 / width)
    check_w, check_h = max(8, round(width * check_scale)), max(8, round(height * check_scale))
    ground = np.array([p.is_ground for p in scene.planes])
    Ks, R_list, t_list = [], [], []
    for _ in range(n):
        for _attempt in range(max_tries):
            azimuth = np.radians(scene.arc_center_deg
                                 + rng.uniform(-0.5, 0.5) * scene.arc_span_deg)
            distance = rng.uniform(*scene.distance_range)
            center = scene.target + distance * _horizontal(azimuth)
            center[2] = rng.uniform(*scene.height_range)
            look_at = scene.target + rng.normal(0, 1, 3) * [0.3, 0.3, 0.15]
            R_cw = look_at_rotation(center, look_at, roll_deg=rng.uniform(-15, 15))
            t_cw = -R_cw @ center
            K = intrinsics(rng.uniform(0.9, 1.2) * width, width, height)
            index = surface_index_map(scene, _rescale_intrinsics(K, check_w / width),
                                      R_cw, t_cw, check_w, check_h)
            covered = index >= 0
            structure = covered & ~ground[np.maximum(index, 0)]
            if covered.mean() > min_coverage and structure.mean() >= min_structure:
                break
        else:
            raise RuntimeError(f"no camera seeing the scene well found in {max_tries} tries")
        Ks.append(K)
        R_list.append(R_cw)
        t_list.append(t_cw)
    return np.array(Ks).reshape(n, 3, 3), np.array(R_list).reshape(n, 3, 3), \
        np.array(t_list).reshape(n, 3)


def scene_thresholds(R_cw: np.ndarray, t_cw: np.ndarray, difficulty: float) -> np.ndarray:
    """The 6 increasing registration thresholds (world units) of a scene's cameras.

    ``THRESHOLD_FRACTIONS`` of the median distance of the camera centres to their mean,
    times ``difficulty`` (a per-scene factor, so scenes are not all equally hard).
    R_cw (n, 3, 3), t_cw (n, 3) -> (6,).
    """
    centers = camera_centers(R_cw, t_cw)
    spread = float(np.median(np.linalg.norm(centers - centers.mean(axis=0), axis=1)))
    return THRESHOLD_FRACTIONS * spread * difficulty


# =========================================================================== the dataset
def _letters(index: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa', ... (names for any number of datasets)."""
    name = ""
    index += 1
    while index > 0:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


def _rng(spec: DemoSpec, *tags: int) -> np.random.Generator:
    """Independent random stream for one decision, from the seed and integer tags."""
    return np.random.default_rng([spec.seed, *tags])


@dataclass(frozen=True)
class _Shot:
    """A batch of views of one scene for one dataset.

    split: _SPLIT_TRAIN or _SPLIT_TEST; dataset_index: which dataset of that split;
    n_views: how many cameras; tags: random stream of the cameras and photometric jitter.
    """

    split: int
    dataset_index: int
    n_views: int
    tags: tuple[int, ...]


@dataclass(frozen=True)
class _SceneJob:
    """One scene and every shot of it (a scene is made once, however many datasets use it).

    name: scene name (``outliers`` for a one-off outlier scene, whose views get NaN poses);
    scene_tags: random stream of the scene geometry and textures.
    """

    name: str
    scene_tags: tuple[int, ...]
    shots: tuple[_Shot, ...]


@dataclass(frozen=True)
class _View:
    """One rendered image: its scene name, pixels (uint8 RGB) and camera (NaN pose for
    outliers)."""

    scene: str
    image: np.ndarray
    K: np.ndarray
    R_cw: np.ndarray
    t_cw: np.ndarray


def _scene_jobs(spec: DemoSpec) -> list[_SceneJob]:
    """Every scene to render and which datasets want views of it, in a fixed order."""
    n_train_scenes = spec.train_datasets * spec.scenes_per_train_dataset
    # seen test scenes: walk a shuffled list of the training scenes, so test datasets share
    # none while there are enough
    seen_order = _rng(spec, _SEEN_PICK).permutation(n_train_scenes)
    test_shots: dict[int, list[_Shot]] = {i: [] for i in range(n_train_scenes)}
    for d in range(spec.test_datasets):
        for k in range(spec.test_seen_scenes):
            scene_index = int(seen_order[(d * spec.test_seen_scenes + k) % n_train_scenes])
            test_shots[scene_index].append(
                _Shot(_SPLIT_TEST, d, spec.test_views_per_scene, (_TEST_CAMERAS, 0, d, k)))

    jobs = []
    for d in range(spec.train_datasets):
        for s in range(spec.scenes_per_train_dataset):
            train_shot = _Shot(_SPLIT_TRAIN, d, spec.train_views_per_scene,
                               (_TRAIN_CAMERAS, d, s))
            scene_index = d * spec.scenes_per_train_dataset + s
            jobs.append(_SceneJob(f"scene_{_letters(d)}{s + 1}", (_TRAIN_SCENE, d, s),
                                  (train_shot, *test_shots[scene_index])))
    for d in range(spec.test_datasets):
        for k in range(spec.test_unseen_scenes):
            shot = _Shot(_SPLIT_TEST, d, spec.test_views_per_scene, (_TEST_CAMERAS, 1, d, k))
            jobs.append(_SceneJob(f"scene_test_{_letters(d)}{k + 1}", (_TEST_SCENE, d, k),
                                  (shot,)))
    for split, n_datasets in ((_SPLIT_TRAIN, spec.train_datasets),
                              (_SPLIT_TEST, spec.test_datasets)):
        for d in range(n_datasets):
            for k in range(spec.outliers_per_dataset):
                shot = _Shot(split, d, 1, (_OUTLIER_CAMERAS, split, d, k))
                jobs.append(_SceneJob(OUTLIER_SCENE, (_OUTLIER_SCENE, split, d, k), (shot,)))
    return jobs


def _run_scene_job(spec: DemoSpec, job: _SceneJob) -> list[list[_View]]:
    """Make the job's scene and render its shots: one list of views per shot. Pure: the
    result depends on (spec, job) only, not on what was rendered before."""
    scene = make_scene(_rng(spec, *job.scene_tags))
    views_per_shot = []
    for shot in job.shots:
        K, R_cw, t_cw = sample_cameras(_rng(spec, *shot.tags), scene, shot.n_views,
                                       spec.image_width, spec.image_height)
        views = []
        for i in range(shot.n_views):
            clean = render_view(scene, K[i], R_cw[i], t_cw[i], spec.image_width,
                                spec.image_height)
            image = photometric_jitter(clean, _rng(spec, _JITTER, *shot.tags, i))
            if job.name == OUTLIER_SCENE:  # an outlier belongs to no scene: no pose
                views.append(_View(job.name, image, K[i], np.full((3, 3), np.nan),
                                   np.full(3, np.nan)))
            else:
                views.append(_View(job.name, image, K[i], R_cw[i], t_cw[i]))
        views_per_shot.append(views)
    return views_per_shot


def _dataset_name(split: int, index: int) -> str:
    return f"demo_{'train' if split == _SPLIT_TRAIN else 'test'}_{_letters(index)}"


def _build_datasets(spec: DemoSpec):
    """Render everything. Returns ({(split, dataset index): [views]}, train threshold rows,
    test threshold rows), threshold rows being [dataset, scene, thresholds]."""
    jobs = _scene_jobs(spec)
    results = [_run_scene_job(spec, job) for job in jobs]
    datasets: dict[tuple[int, int], list[_View]] = {
        **{(_SPLIT_TRAIN, d): [] for d in range(spec.train_datasets)},
        **{(_SPLIT_TEST, d): [] for d in range(spec.test_datasets)}}
    thresholds: dict[int, list[list[str]]] = {_SPLIT_TRAIN: [], _SPLIT_TEST: []}
    for job, views_per_shot in zip(jobs, results):
        # one difficulty per scene: its train and test views are judged alike
        difficulty = float(_rng(spec, _DIFFICULTY, *job.scene_tags).uniform(0.6, 1.6))
        for shot, views in zip(job.shots, views_per_shot):
            datasets[(shot.split, shot.dataset_index)].extend(views)
            if job.name != OUTLIER_SCENE:
                R_cw = np.array([view.R_cw for view in views])
                t_cw = np.array([view.t_cw for view in views])
                thresholds[shot.split].append([
                    _dataset_name(shot.split, shot.dataset_index), job.name,
                    format_numbers(scene_thresholds(R_cw, t_cw, difficulty))])
    for rows in thresholds.values():
        rows.sort(key=lambda row: (row[0], row[1]))
    return datasets, thresholds[_SPLIT_TRAIN], thresholds[_SPLIT_TEST]


def _clear_previous_output(root: Path, overwrite: bool) -> None:
    """Remove what an earlier generation wrote under ``root`` (only those files and folders)
    and leave ``INCOMPLETE_MARKER`` in their place.

    Refuses (FileExistsError) to delete a train/ or test/ it did not write, e.g. real
    competition data, unless ``overwrite``.
    """
    ours = (root / SPEC_FILE).exists() or (root / INCOMPLETE_MARKER).exists()
    present = [name for name in (*OUTPUT_DIRS, *OUTPUT_FILES) if (root / name).exists()]
    if present and not ours and not overwrite:
        raise FileExistsError(f"{root} already holds {present} not written by the demo "
                              "generator; pass overwrite=True to replace them")
    # mark the folder as ours and half-written first: a crash from here on means "redo"
    (root / INCOMPLETE_MARKER).touch()
    (root / SPEC_FILE).unlink(missing_ok=True)
    for name in OUTPUT_DIRS:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for name in OUTPUT_FILES:
        (root / name).unlink(missing_ok=True)


def generate_demo_dataset(root: str | Path, spec: DemoSpec = DemoSpec(),
                          overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the IMC 2025 layout under ``root``; returns ``root``.

    If ``root/demo_spec.json`` already records this spec (and generator version), nothing is
    written unless ``overwrite``. Otherwise earlier output is removed and everything is
    regenerated; every file is written atomically and ``demo_spec.json`` last, so an
    interrupted run is redone next time. Raises FileExistsError rather than delete a train/
    or test/ that the generator did not write, unless ``overwrite``.
    """
    root = Path(root)
    complete = (not (root / INCOMPLETE_MARKER).exists()
                and all((root / name).exists() for name in (*OUTPUT_DIRS, *OUTPUT_FILES)))
    if not overwrite and complete and read_demo_spec(root) == spec:
        log.info("demo data in %s already matches the spec; not regenerating", root)
        return root
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(root, overwrite)  # leaves the INCOMPLETE_MARKER

    datasets, train_thresholds, test_thresholds = _build_datasets(spec)
    labels: dict[str, list[list[str]]] = {"train": [], "test": []}
    calibration, submission = [], []
    for (split_tag, d), views in datasets.items():
        split = "train" if split_tag == _SPLIT_TRAIN else "test"
        dataset = _dataset_name(split_tag, d)
        # opaque names in shuffled order: neither name nor order tells the scene
        order = _rng(spec, _SHUFFLE, split_tag, d).permutation(len(views))
        digits = max(4, len(str(len(views) - 1)))
        named = sorted(((f"{dataset}_{position:0{digits}d}.png", views[index])
                        for position, index in enumerate(order)),
                       key=lambda item: (item[1].scene, item[0]))
        for image_name, view in named:
            write_image_rgb(root / split / dataset / image_name, view.image)
            labels[split].append([dataset, view.scene, image_name, format_numbers(view.R_cw),
                                  format_numbers(view.t_cw)])
            calibration.append([dataset, view.scene, image_name, format_numbers(view.K),
                                spec.image_width, spec.image_height])
        if split == "test":
            # placeholder predictions, listed by image name so the order tells no scene
            for image_name, _view in sorted(named, key=lambda item: item[0]):
                submission.append([default_image_id(dataset, image_name), dataset,
                                   OUTLIER_SCENE, image_name, format_numbers(np.eye(3)),
                                   format_numbers(np.zeros(3))])

    write_csv_atomic(pd.DataFrame(labels["train"], columns=LABEL_COLUMNS),
                     root / "train_labels.csv")
    write_csv_atomic(pd.DataFrame(labels["test"], columns=LABEL_COLUMNS), root / "test_labels.csv")
    write_csv_atomic(pd.DataFrame(train_thresholds, columns=THRESHOLD_COLUMNS),
                     root / "train_thresholds.csv")
    write_csv_atomic(pd.DataFrame(test_thresholds, columns=THRESHOLD_COLUMNS),
                     root / "test_thresholds.csv")
    write_csv_atomic(pd.DataFrame(submission, columns=SUBMISSION_COLUMNS),
                     root / "sample_submission.csv")
    write_csv_atomic(pd.DataFrame(calibration, columns=CALIBRATION_COLUMNS),
                     root / "calibration.csv")
    with atomic_path(root / SPEC_FILE) as tmp:
        tmp.write_text(json.dumps(spec.to_json_dict(), indent=2) + "\n")
    (root / INCOMPLETE_MARKER).unlink()
    n_images = sum(len(v) for v in datasets.values())
    log.info("wrote %d demo images to %s in %.1f s", n_images, root,
             time.perf_counter() - started)
    return root


def demo_folder(demo_dir: str | Path, size: str) -> Path:
    """Folder of the demo data of one size: ``demo_dir`` itself for ``default``, else a
    sibling ``<demo_dir>_<size>``, so switching sizes never regenerates the other ones."""
    demo_dir = Path(demo_dir)
    return demo_dir if size == "default" else demo_dir.with_name(f"{demo_dir.name}_{size}")


def ensure_data_dir(cfg) -> Path:
    """The competition-layout data folder of a run (``cfg``: ``config.Config``).

    When ``cfg.data_dir`` is the demo folder (``config.DEMO_DATA_DIR``), demo data of size
    ``cfg.demo_size`` (``config.DEMO_SIZES``) and seed ``cfg.seed`` is generated there, or
    reused if already there. Any other folder must exist (FileNotFoundError otherwise).
    """
    from config import DEMO_DATA_DIR, DEMO_SIZES  # the run's config, only needed here

    data_dir = Path(cfg.data_dir)
    if data_dir.resolve() != Path(DEMO_DATA_DIR).resolve():
        if data_dir.is_file():
            raise FileNotFoundError(f"--data-dir {data_dir} is a file; give the data folder "
                                    f"(test/, or a folder of photos)")
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data folder not found: {data_dir}")
        return data_dir
    if cfg.demo_size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {cfg.demo_size!r}; one of {sorted(DEMO_SIZES)}")
    spec = DemoSpec(**{**DEMO_SIZES[cfg.demo_size], "seed": cfg.seed})
    return generate_demo_dataset(demo_folder(data_dir, cfg.demo_size), spec)


# =========================================================================== command line
def main(argv: list[str] | None = None) -> int:
    """``python -m src.demo_data OUT_DIR [--seed N] [--image-width W] ... [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m src.demo_data",
                                     description="Write synthetic IMC 2025 style data.")
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    for f in fields(DemoSpec):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default,
                            help=f"default {f.default}")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate even if the folder already matches the spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = DemoSpec(**{f.name: getattr(args, f.name) for f in fields(DemoSpec)})
    except ValueError as error:
        parser.error(str(error))
    if args.out_dir.exists() and not args.out_dir.is_dir():
        print(f"error: {args.out_dir} is a file; give a folder to write the demo data to",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    generate_demo_dataset(args.out_dir, spec, overwrite=args.overwrite)
    print(f"demo data ready in {args.out_dir} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
