"""Pictures of a run for the viewer: thumbnails framed right / wrong against the labels,
cameras in 3D (plotly), and a pair's matches drawn side by side. Plain functions returning
arrays, bytes or plotly figures; the data comes from ``src.viewer.data``.

Poses are world-to-camera (``x_cam = R_cw @ X + t_cw``); a camera looks along the third
row of ``R_cw``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import plotly.graph_objects as go

from src.data_io import DataError, read_image_rgb
from src.viewer.data import Alignment, PairView

RIGHT_RGB, WRONG_RGB, UNKNOWN_RGB = (46, 160, 67), (215, 48, 39), (160, 160, 160)
INLIER_RGB, REJECTED_RGB = (40, 200, 60), (230, 50, 50)
# Browsers slow down on huge point clouds; a fixed random subset looks the same.
MAX_POINTS_SHOWN = 20000


def thumbnail(path: Path | None, side: int = 160) -> np.ndarray:
    """The image scaled so its longer side is ``side`` pixels (uint8 RGB); a grey tile when
    it cannot be read."""
    try:
        if path is None:
            raise FileNotFoundError("no image folder")
        image = read_image_rgb(path)
    except (FileNotFoundError, DataError):
        return np.full((side * 3 // 4, side, 3), 128, np.uint8)
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def framed(image: np.ndarray, correct: bool | None, width: int = 5) -> np.ndarray:
    """The thumbnail in a green (right), red (wrong) or grey (unknown) frame."""
    colour = UNKNOWN_RGB if correct is None else RIGHT_RGB if correct else WRONG_RGB
    out = np.empty((image.shape[0] + 2 * width, image.shape[1] + 2 * width, 3), np.uint8)
    out[:] = colour
    out[width:-width, width:-width] = image
    return out


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB -> JPEG bytes, ready for a browser."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("OpenCV could not encode a thumbnail as JPEG")
    return encoded.tobytes()


def _span(points: np.ndarray) -> float:
    finite = points[np.isfinite(points).all(axis=1)]
    span = float(np.ptp(finite, axis=0).max()) if len(finite) > 1 else 0.0
    return span if span > 0 else 1.0


def _segments(starts: np.ndarray, ends: np.ndarray) -> tuple[list, list, list]:
    """x, y, z lists drawing one line per row (None breaks the line between rows)."""
    xyz: tuple[list, list, list] = ([], [], [])
    for a, b in zip(starts, ends):
        for axis in range(3):
            xyz[axis].extend([a[axis], b[axis], None])
    return xyz


def _camera_traces(centers: np.ndarray, axes: np.ndarray, names: list[str], colour: str,
                   label: str, arrow: float, hover: list[str] | None = None) -> list[go.Scatter3d]:
    x, y, z = _segments(centers, centers + arrow * axes)
    return [go.Scatter3d(x=centers[:, 0], y=centers[:, 1], z=centers[:, 2], mode="markers",
                         marker=dict(size=4, color=colour), name=label,
                         text=hover or names, hoverinfo="text"),
            go.Scatter3d(x=x, y=y, z=z, mode="lines", line=dict(color=colour, width=5),
                         name=f"{label}: viewing direction", hoverinfo="skip",
                         showlegend=False)]


def _layout(fig: go.Figure, title: str, points: np.ndarray) -> go.Figure:
    # True proportions, except that an axis is drawn at least a third as long as the longest:
    # plotly crops very flat boxes (cameras at one height) and flattens them to a line.
    finite = points[np.isfinite(points).all(axis=1)]
    extent = np.ptp(finite, axis=0) if len(finite) > 1 else np.ones(3)
    ratio = np.maximum(extent / max(extent.max(), 1e-12), 1 / 3)
    fig.update_layout(title=title, height=560, margin=dict(l=0, r=0, t=40, b=0),
                      scene=dict(aspectmode="manual",
                                 aspectratio=dict(x=ratio[0], y=ratio[1], z=ratio[2])),
                      legend=dict(x=0, y=1))
    return fig


def cameras_figure(centers: np.ndarray, R_cw: np.ndarray, names: list[str],
                   points: np.ndarray | None = None, title: str = "") -> go.Figure:
    """Camera centres and viewing directions (and sparse points) of one cluster, in its own
    frame; interactive."""
    fig = go.Figure()
    if points is not None and len(points):
        if len(points) > MAX_POINTS_SHOWN:
            keep = np.random.default_rng(0).choice(len(points), MAX_POINTS_SHOWN, replace=False)
            points = points[np.sort(keep)]
        fig.add_trace(go.Scatter3d(x=points[:, 0], y=points[:, 1], z=points[:, 2],
                                   mode="markers", marker=dict(size=1.5, color="#888888"),
                                   name=f"sparse points ({len(points)})", hoverinfo="skip"))
    arrow = 0.2 * _span(centers)
    for trace in _camera_traces(centers, R_cw[:, 2, :], names, "#1f77b4",
                                f"cameras ({len(names)})", arrow):
        fig.add_trace(trace)
    shown = [centers, centers + arrow * R_cw[:, 2, :]]
    return _layout(fig, title, np.concatenate(shown + ([points] if points is not None else [])))


def alignment_figure(alignment: Alignment, title: str = "") -> go.Figure:
    """Ground-truth cameras beside the aligned predictions, a red line for each error."""
    fig = go.Figure()
    arrow = 0.2 * _span(alignment.gt_centers)
    for trace in _camera_traces(alignment.gt_centers, alignment.gt_axes, alignment.images,
                                "#2ca02c", "ground truth", arrow):
        fig.add_trace(trace)
    hover = [f"{name}: error {err:.3g}" for name, err in zip(alignment.images, alignment.errors)]
    for trace in _camera_traces(alignment.pred_centers, alignment.pred_axes, alignment.images,
                                "#1f77b4", "predicted, aligned", arrow, hover):
        fig.add_trace(trace)
    x, y, z = _segments(alignment.pred_centers, alignment.gt_centers)
    fig.add_trace(go.Scatter3d(x=x, y=y, z=z, mode="lines", line=dict(color="#d62728", width=4),
                               name="centre error", hoverinfo="skip"))
    return _layout(fig, title, np.concatenate([
        alignment.gt_centers, alignment.gt_centers + arrow * alignment.gt_axes,
        alignment.pred_centers, alignment.pred_centers + arrow * alignment.pred_axes]))


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, pair: PairView,
                 height: int = 480) -> np.ndarray:
    """Both images side by side at the same height, rejected matches in red under the
    verified ones in green (uint8 RGB)."""
    scales, resized = [], []
    for image in (image_a, image_b):
        scale = height / image.shape[0]
        scales.append(scale)
        resized.append(cv2.resize(image, (max(1, round(image.shape[1] * scale)), height),
                                  interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
    gap = 8
    canvas = np.full((height, resized[0].shape[1] + gap + resized[1].shape[1], 3), 255, np.uint8)
    canvas[:, :resized[0].shape[1]] = resized[0]
    offset = resized[0].shape[1] + gap
    canvas[:, offset:] = resized[1]
    line = max(1, height // 400)
    for matches, colour in ((pair.rejected, REJECTED_RGB), (pair.inliers, INLIER_RGB)):
        for ia, ib in np.asarray(matches).reshape(-1, 2):
            # Keypoints have integer values at pixel centres: +0.5 maps them onto the canvas.
            xa, ya = (pair.keypoints_a[ia] + 0.5) * scales[0] - 0.5
            xb, yb = (pair.keypoints_b[ib] + 0.5) * scales[1] - 0.5
            a, b = (int(round(xa)), int(round(ya))), (int(round(xb)) + offset, int(round(yb)))
            cv2.line(canvas, a, b, colour, line, cv2.LINE_AA)
            cv2.circle(canvas, a, line + 1, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, b, line + 1, colour, -1, cv2.LINE_AA)
    return canvas
