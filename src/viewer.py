"""What the viewer (``src/app.py``) shows, as plain functions with no Streamlit in them.

A run folder (``outputs/<run>``) is read, never written: its ``submission.csv`` (both
pipelines write it), its stage timings, and, for the geometric pipeline, the caches under
``geometric/<dataset>/`` through the project's own loaders (``load_all_features``,
``load_pair`` / ``load_verified_matches``, ``load_models``). Scores come from
``src.evaluation``; the labels are the run's ``data_dir/test_labels.csv`` when present.

"Run on uploads" lays the photos out as a competition input inside a new run folder and runs
the geometric pipeline's stages on it (:func:`run_on_uploads`).

Poses are world-to-camera (``x_cam = R_cw @ X + t_cw``, centre ``C = -R_cw.T @ t_cw``);
a camera looks along the third row of ``R_cw``.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from src.evaluation import ScoreReport, registration_errors, score_submission, true_scenes
from src.geometry import apply_similarity, camera_centers, rotation_angle_deg, umeyama_similarity
from src.local_features import read_cache_config
from src.matching import load_pair, load_verified_matches
from src.plots import cluster_order
from src.reconstruction import Model, load_models
from src.utils_io import (IMAGE_SUFFIXES, OUTLIER_SCENE, DataError, decode_image_file,
                          parse_numbers, read_image_rgb, read_submission, write_image_rgb)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SUBMISSION_FILE = "submission.csv"
UPLOAD_DATASET = "uploads"
RIGHT_RGB, WRONG_RGB, UNKNOWN_RGB = (46, 160, 67), (215, 48, 39), (160, 160, 160)
INLIER_RGB, REJECTED_RGB = (40, 200, 60), (230, 50, 50)
# Browsers slow down on huge point clouds; a fixed random subset looks the same.
MAX_POINTS_SHOWN = 20000


# =========================================================================== run folders
@dataclass(frozen=True, eq=False)
class RunData:
    """One run folder as the viewer needs it.

    predictions: one row per image of submission.csv (dataset, image, scene, posed), in its
        order; R_cw (N, 3, 3) and t_cw (N, 3) hold the poses, NaN where there is none.
    timings: seconds per run stage (timings.csv); stage_seconds: seconds per geometric
        stage and dataset (timings_geometric.csv); None when the run has no such file.
    data_dir: the run's input folder if it can be found; labels_csv / thresholds_csv: its
        test labels, None when the data is unlabelled (Kaggle's hidden test set, uploads).
    """

    run_dir: Path
    config: dict
    predictions: pd.DataFrame
    R_cw: np.ndarray
    t_cw: np.ndarray
    timings: pd.DataFrame | None = None
    stage_seconds: pd.DataFrame | None = None
    data_dir: Path | None = None
    labels_csv: Path | None = None
    thresholds_csv: Path | None = None

    @property
    def centers(self) -> np.ndarray:
        """Camera centres (N, 3) in each cluster's own frame, NaN where unposed."""
        return camera_centers(self.R_cw, self.t_cw)

    @property
    def datasets(self) -> list[str]:
        return list(pd.unique(self.predictions["dataset"]))

    @property
    def has_labels(self) -> bool:
        return self.labels_csv is not None and self.thresholds_csv is not None

    @property
    def pipeline(self) -> str:
        return str(self.config.get("pipeline", "learned"))

    def rows(self, dataset: str) -> np.ndarray:
        """Row indices of one dataset's images."""
        return np.flatnonzero(self.predictions["dataset"].to_numpy() == dataset)

    def image_path(self, dataset: str, image: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / "test" / dataset / image


def find_runs(root: str | Path) -> list[Path]:
    """Run folders (holding a submission.csv) directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / SUBMISSION_FILE).is_file()]
    return sorted(runs, key=lambda p: (-(p / SUBMISSION_FILE).stat().st_mtime, p.name))


def run_stamp(run_dir: str | Path) -> float:
    """Changes whenever the run is rewritten: the key that keeps the app's caches fresh."""
    path = Path(run_dir) / SUBMISSION_FILE
    return path.stat().st_mtime if path.is_file() else 0.0


def resolve_data_dir(run_dir: Path, data_dir: str) -> Path | None:
    """The run's ``data_dir`` as written in config.json (relative to where main.py ran, which
    is usually the repository) or None when it is nowhere to be found."""
    if not data_dir:
        return None
    written = Path(data_dir)
    for candidate in (written, REPO / written, run_dir / written):
        if (candidate / "test").is_dir():
            return candidate
    return None


def _poses(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """R_cw (N, 3, 3), t_cw (N, 3) of a submission or labels table (pose strings)."""
    R = [parse_numbers(v, 9, f"{name}, line {row + 2}, field rotation_matrix")
         for row, v in enumerate(frame["rotation_matrix"])]
    t = [parse_numbers(v, 3, f"{name}, line {row + 2}, field translation_vector")
         for row, v in enumerate(frame["translation_vector"])]
    return np.array(R, np.float64).reshape(-1, 3, 3), np.array(t, np.float64).reshape(-1, 3)


def _read_optional_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; FileNotFoundError when it has no submission.csv."""
    run_dir = Path(run_dir)
    submission_path = run_dir / SUBMISSION_FILE
    if not submission_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {SUBMISSION_FILE} there")
    submission = read_submission(submission_path)
    R_cw, t_cw = _poses(submission, str(submission_path))
    predictions = submission[["dataset", "image", "scene"]].reset_index(drop=True)
    predictions["posed"] = np.isfinite(R_cw).all(axis=(1, 2)) & np.isfinite(t_cw).all(axis=1)
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    data_dir = resolve_data_dir(run_dir, config.get("data_dir", ""))
    labels = thresholds = None
    if data_dir is not None and (data_dir / "test_labels.csv").is_file() \
            and (data_dir / "test_thresholds.csv").is_file():
        labels, thresholds = data_dir / "test_labels.csv", data_dir / "test_thresholds.csv"
    return RunData(run_dir=run_dir, config=config, predictions=predictions, R_cw=R_cw,
                   t_cw=t_cw, timings=_read_optional_csv(run_dir / "timings.csv"),
                   stage_seconds=_read_optional_csv(run_dir / "timings_geometric.csv"),
                   data_dir=data_dir, labels_csv=labels, thresholds_csv=thresholds)


def dataset_overview(run: RunData) -> pd.DataFrame:
    """Per dataset: images, predicted clusters (outliers not counted), outliers, posed."""
    rows = []
    for dataset in run.datasets:
        group = run.predictions.iloc[run.rows(dataset)]
        scenes = group["scene"]
        rows.append({"dataset": dataset, "images": len(group),
                     "clusters": int(scenes[scenes != OUTLIER_SCENE].nunique()),
                     "outliers": int((scenes == OUTLIER_SCENE).sum()),
                     "posed": int(group["posed"].sum())})
    return pd.DataFrame(rows, columns=["dataset", "images", "clusters", "outliers", "posed"])


def score_run(run: RunData) -> ScoreReport | None:
    """The IMC 2025 score of the run's submission (src.evaluation); None without labels."""
    if not run.has_labels:
        return None
    return score_submission(run.run_dir / SUBMISSION_FILE, run.labels_csv, run.thresholds_csv)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Labels of the run's images, row-aligned with ``RunData.predictions``.

    scenes: ground-truth scene per image (NaN if unlabelled); R_cw, t_cw: its pose (NaN for
    outliers); thresholds: {(dataset, scene): thresholds (r,)} of the metric.
    """

    scenes: pd.Series
    R_cw: np.ndarray
    t_cw: np.ndarray
    thresholds: dict[tuple[str, str], np.ndarray]

    @property
    def centers(self) -> np.ndarray:
        return camera_centers(self.R_cw, self.t_cw)


def load_ground_truth(run: RunData) -> GroundTruth | None:
    """The run's test labels and thresholds, or None when it has none."""
    if not run.has_labels:
        return None
    labels = read_submission(run.labels_csv)
    R_cw, t_cw = _poses(labels, str(run.labels_csv))
    index = {key: row for row, key in enumerate(zip(labels["dataset"], labels["image"]))}
    rows = [index.get(key, -1) for key in zip(run.predictions["dataset"],
                                               run.predictions["image"])]
    found = np.array([r >= 0 for r in rows])
    R = np.full((len(rows), 3, 3), np.nan)
    t = np.full((len(rows), 3), np.nan)
    R[found], t[found] = R_cw[[r for r in rows if r >= 0]], t_cw[[r for r in rows if r >= 0]]
    thresholds_frame = read_submission(run.thresholds_csv)
    thresholds = {}
    for row, rec in enumerate(thresholds_frame.itertuples(index=False)):
        count = len(str(rec.thresholds).split(";"))
        thresholds[(rec.dataset, rec.scene)] = parse_numbers(
            rec.thresholds, count, f"{run.thresholds_csv}, line {row + 2}, field thresholds")
    return GroundTruth(scenes=true_scenes(run.predictions, run.labels_csv), R_cw=R, t_cw=t,
                       thresholds=thresholds)


# =========================================================================== clusters
@dataclass(frozen=True)
class ClusterGroup:
    """One predicted cluster of a dataset (or its outliers), as the gallery shows it.

    truth: ground-truth scene per image; correct: whether each image belongs there (its
    truth is the cluster's ``expected_scene``); both None without labels.
    """

    name: str
    images: list[str]
    rows: list[int]
    truth: list[str] | None = None
    correct: list[bool] | None = None
    expected_scene: str | None = None

    @property
    def is_outliers(self) -> bool:
        return self.name == OUTLIER_SCENE


def _expected_scene(name: str, dataset: str, truth: list[str],
                    report: ScoreReport | None) -> str:
    """The ground-truth scene a cluster stands for: the one the scorer assigned to it (most
    shared images first), else the most common real scene among its images."""
    if name == OUTLIER_SCENE:
        return OUTLIER_SCENE
    if report is not None:
        scenes = report.per_scene
        assigned = scenes[(scenes["dataset"] == dataset) & (scenes["cluster"] == name)]
        if len(assigned):
            return str(assigned.sort_values("shared", ascending=False)["scene"].iloc[0])
    real = pd.Series([s for s in truth if isinstance(s, str) and s != OUTLIER_SCENE])
    return str(real.value_counts().index[0]) if len(real) else OUTLIER_SCENE


def cluster_groups(run: RunData, dataset: str, truth: GroundTruth | None = None,
                   report: ScoreReport | None = None) -> list[ClusterGroup]:
    """The dataset's predicted clusters, largest first, then its outliers (the order of the
    run's own gallery plots)."""
    rows = run.rows(dataset)
    scenes = run.predictions["scene"].iloc[rows].reset_index(drop=True)
    groups = []
    for name in cluster_order(scenes):
        members = [int(r) for r in rows[scenes.to_numpy() == name]]
        images = list(run.predictions["image"].iloc[members])
        if truth is None:
            groups.append(ClusterGroup(name, images, members))
            continue
        member_truth = [str(s) if isinstance(s, str) else "unlabelled"
                        for s in truth.scenes.iloc[members]]
        expected = _expected_scene(name, dataset, member_truth, report)
        groups.append(ClusterGroup(name, images, members, member_truth,
                                   [s == expected for s in member_truth], expected))
    return groups


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


# =========================================================================== cameras
def cluster_rows(run: RunData, dataset: str, cluster: str, posed_only: bool = True
                 ) -> np.ndarray:
    """Row indices of a cluster's images (by default only those with a pose)."""
    rows = run.rows(dataset)
    rows = rows[run.predictions["scene"].to_numpy()[rows] == cluster]
    return rows[run.predictions["posed"].to_numpy()[rows]] if posed_only else rows


def posed_clusters(run: RunData, dataset: str) -> list[str]:
    """The dataset's clusters with at least one posed image, largest first."""
    scenes = run.predictions["scene"].iloc[run.rows(dataset)].reset_index(drop=True)
    return [name for name in cluster_order(scenes)
            if name != OUTLIER_SCENE and len(cluster_rows(run, dataset, name))]


def load_sfm_models(run_dir: str | Path, dataset: str) -> list[tuple[Path, Model]]:
    """Every model cached by the reconstruction stage for a dataset: (folder, model)."""
    found = []
    for models_dir in sorted(Path(run_dir).glob(f"geometric/{dataset}/sfm/*/models")):
        for k, model in enumerate(load_models(models_dir) or []):
            found.append((models_dir / str(k), model))
    return found


def model_for_cluster(models: list[tuple[Path, Model]], images: list[str], R_cw: np.ndarray,
                      t_cw: np.ndarray, atol: float = 1e-6) -> tuple[Path, Model] | None:
    """The SfM model that posed these images: the one holding exactly their poses (caches of
    earlier configurations may sit beside it, so names alone cannot tell)."""
    for path, model in models:
        if all(name in model.poses
               and np.allclose(model.poses[name][0], R, atol=atol)
               and np.allclose(model.poses[name][1], t, atol=atol)
               for name, R, t in zip(images, R_cw, t_cw)):
            return path, model
    return None


@dataclass(frozen=True, eq=False)
class Alignment:
    """A cluster's predicted cameras moved onto its ground-truth scene.

    Rows are the cluster's posed images that belong to ``scene``. The similarity
    ``x -> scale * rotation @ x + translation`` is the least-squares fit on the cameras the
    scorer registers at its loosest threshold (``threshold``), so ``errors`` are the scorer's
    registration errors there; ``within`` holds, per threshold of the scene, the number of
    cameras the scorer registers (its errors at that threshold's own best model).
    """

    scene: str
    images: list[str]
    pred_centers: np.ndarray  # (N, 3) aligned into the ground-truth frame
    pred_axes: np.ndarray  # (N, 3) viewing directions, aligned
    gt_centers: np.ndarray
    gt_axes: np.ndarray
    errors: np.ndarray  # (N,) centre distance after alignment, ground-truth units
    threshold: float
    thresholds: np.ndarray
    within: np.ndarray  # (r,) cameras registered at each threshold
    scale: float
    rotation: np.ndarray
    translation: np.ndarray


def align_cluster(run: RunData, truth: GroundTruth, dataset: str, cluster: str,
                  scene: str) -> Alignment | None:
    """Align a cluster's posed cameras to ``scene`` as the scorer does; None when fewer
    than 3 of its cameras are in that scene (no similarity can be fitted)."""
    rows = cluster_rows(run, dataset, cluster)
    rows = rows[truth.scenes.iloc[rows].to_numpy() == scene]
    thresholds = truth.thresholds.get((dataset, scene))
    if len(rows) < 3 or thresholds is None:
        return None
    pred, gt = run.centers[rows], truth.centers[rows]
    errors = registration_errors(pred, gt, thresholds)  # the scorer's, (N, r)
    loosest = int(np.argmax(thresholds))
    registered = errors[:, loosest] < thresholds[loosest]
    fit_on = registered if registered.sum() >= 3 else np.ones(len(rows), bool)
    scale, rotation, translation = umeyama_similarity(pred[fit_on], gt[fit_on])
    aligned = apply_similarity(scale, rotation, translation, pred)
    pred_axes = run.R_cw[rows][:, 2, :] @ rotation.T
    return Alignment(scene=scene, images=list(run.predictions["image"].iloc[rows]),
                     pred_centers=aligned, pred_axes=pred_axes, gt_centers=gt,
                     gt_axes=truth.R_cw[rows][:, 2, :],
                     errors=np.linalg.norm(aligned - gt, axis=1),
                     threshold=float(thresholds[loosest]), thresholds=np.asarray(thresholds),
                     within=(errors < thresholds[None, :]).sum(axis=0), scale=scale,
                     rotation=rotation, translation=translation)


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


def alignment_table(alignment: Alignment) -> pd.DataFrame:
    """Per image: centre error after alignment and whether the scorer registers it at the
    loosest threshold."""
    return pd.DataFrame({"image": alignment.images, "centre error": alignment.errors,
                         f"within {alignment.threshold:.3g}":
                             alignment.errors < alignment.threshold})


# =========================================================================== pairs
def cache_files(run_dir: str | Path, dataset: str, stage: str) -> list[Path]:
    """A dataset's cache files of a stage (``features`` or ``matches``), newest first.

    Globbed rather than named: the file names carry each stage's configuration, and a run
    folder may hold caches of earlier configurations too.
    """
    files = Path(run_dir).glob(f"geometric/{dataset}/{stage}-*.h5")
    return sorted(files, key=lambda p: (-p.stat().st_mtime, p.name))


def features_file_for(matches_path: Path, features_paths: list[Path]) -> Path | None:
    """The features cache a matches cache was computed from (its recorded configuration
    names the features' one); else the newest features file."""
    try:
        recorded = json.loads(read_cache_config(matches_path) or "{}").get("features")
    except (ValueError, AttributeError):
        recorded = None
    for path in features_paths:
        if recorded is not None and read_cache_config(path) == recorded:
            return path
    return features_paths[0] if features_paths else None


def pair_table(matches_path: Path) -> pd.DataFrame:
    """Every matched pair of a cache with its verified inlier count, most inliers first."""
    verified = load_verified_matches(matches_path)
    frame = pd.DataFrame([(a, b, len(m)) for (a, b), m in verified.items()],
                         columns=["image_a", "image_b", "inliers"])
    return frame.sort_values(["inliers", "image_a", "image_b"],
                             ascending=[False, True, True]).reset_index(drop=True)


def split_matches(putative: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """The putative matches (M, 2) that verification rejected (not among the inliers)."""
    if len(putative) == 0:
        return putative.reshape(0, 2)
    kept = {tuple(m) for m in np.asarray(inliers).reshape(-1, 2).tolist()}
    return putative[[tuple(m) not in kept for m in putative.tolist()]].reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class PairView:
    """One matched pair: keypoints (N, 2) of each image (original pixels), the verified
    inliers and the rejected putative matches, rows (index in a, index in b)."""

    image_a: str
    image_b: str
    keypoints_a: np.ndarray
    keypoints_b: np.ndarray
    inliers: np.ndarray
    rejected: np.ndarray


def load_pair_view(matches_path: Path, features: dict, image_a: str, image_b: str) -> PairView:
    """A pair of a matches cache with the keypoints of ``features`` (load_all_features)."""
    putative, inliers, _F = load_pair(matches_path, image_a, image_b)
    return PairView(image_a, image_b, features[image_a].keypoints, features[image_b].keypoints,
                    inliers, split_matches(putative, inliers))


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


def relative_pose(R_a: np.ndarray, t_a: np.ndarray, R_b: np.ndarray, t_b: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pose of camera b relative to camera a: x_b = R_ba @ x_a + t_ba (camera frames)."""
    R_ba = R_b @ R_a.T
    return R_ba, t_b - R_ba @ t_a


def relative_pose_table(run: RunData, truth: GroundTruth | None, dataset: str, image_a: str,
                        image_b: str) -> pd.DataFrame | None:
    """Rotation angle and translation direction of b relative to a, predicted and (when
    labelled) true, with the angular errors; None unless both are posed in one cluster.

    The translation's scale is arbitrary in a reconstruction, so only its direction counts.
    """
    rows = run.rows(dataset)
    images = list(run.predictions["image"].iloc[rows])
    ra, rb = rows[images.index(image_a)], rows[images.index(image_b)]
    scenes = run.predictions["scene"].to_numpy()
    if not (run.predictions["posed"].iloc[ra] and run.predictions["posed"].iloc[rb]) \
            or scenes[ra] != scenes[rb]:
        return None

    def describe(R_a, t_a, R_b, t_b) -> tuple[float, np.ndarray]:
        R_ba, t_ba = relative_pose(R_a, t_a, R_b, t_b)
        norm = np.linalg.norm(t_ba)
        return float(rotation_angle_deg(np.eye(3), R_ba)), t_ba / norm if norm > 0 else t_ba

    angle, direction = describe(run.R_cw[ra], run.t_cw[ra], run.R_cw[rb], run.t_cw[rb])
    def text(vector: np.ndarray) -> str:
        return "(" + ", ".join(f"{v:.3f}" for v in vector) + ")"

    table = [{"": "predicted", "rotation (deg)": angle, "translation direction": text(direction)}]
    if truth is not None and np.isfinite(truth.R_cw[[ra, rb]]).all() \
            and truth.scenes.iloc[ra] == truth.scenes.iloc[rb]:
        true_angle, true_direction = describe(truth.R_cw[ra], truth.t_cw[ra], truth.R_cw[rb],
                                              truth.t_cw[rb])
        R_pred = relative_pose(run.R_cw[ra], run.t_cw[ra], run.R_cw[rb], run.t_cw[rb])[0]
        R_true = relative_pose(truth.R_cw[ra], truth.t_cw[ra], truth.R_cw[rb], truth.t_cw[rb])[0]
        cos = float(np.clip(np.dot(direction, true_direction), -1.0, 1.0))
        table.append({"": "ground truth", "rotation (deg)": true_angle,
                      "translation direction": text(true_direction)})
        table.append({"": "error", "rotation (deg)": float(rotation_angle_deg(R_pred, R_true)),
                      "translation direction": f"{np.degrees(np.arccos(cos)):.2f} deg apart"})
    return pd.DataFrame(table)


# =========================================================================== uploads
@dataclass
class StagedUploads:
    """Uploaded files laid out as ``data_dir/test/<dataset>/``: the images kept, and the
    files skipped with the reason."""

    data_dir: Path
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _unzipped(files: Iterable[tuple[str, bytes]], rejected: list[tuple[str, str]]
              ) -> Iterable[tuple[str, bytes]]:
    """The uploads with every zip replaced by its files (folders and macOS metadata left out)."""
    for name, data in files:
        if not name.lower().endswith(".zip"):
            yield name, data
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.infolist():
                    inner = Path(member.filename)
                    if member.is_dir() or "__MACOSX" in inner.parts or inner.name.startswith("."):
                        continue
                    yield f"{name}/{member.filename}", archive.read(member)
        except (zipfile.BadZipFile, OSError) as error:
            rejected.append((name, f"not a readable zip file ({error})"))


def stage_uploads(files: Iterable[tuple[str, bytes]], data_dir: str | Path,
                  dataset: str = UPLOAD_DATASET) -> StagedUploads:
    """Write uploaded files (name, bytes) as the test images of one dataset, keeping only
    what the project's image decoder reads.

    Zips are unpacked; images in another format OpenCV reads (BMP, TIFF, WebP...) are saved
    as PNG, since the pipeline lists PNG/JPEG files only; anything else is skipped and named
    in ``rejected``. Names that repeat get a numeric suffix.
    """
    staged = StagedUploads(Path(data_dir))
    folder = staged.data_dir / "test" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for upload_name, data in _unzipped(files, staged.rejected):
        stem, suffix = Path(upload_name).stem, Path(upload_name).suffix
        target_suffix = suffix if suffix in IMAGE_SUFFIXES else ".png"
        name = f"{stem}{target_suffix}"
        k = 1
        while (folder / name).exists():
            name, k = f"{stem}-{k}{target_suffix}", k + 1
        path = folder / name
        path.write_bytes(data)
        try:
            decode_image_file(path)
            if suffix not in IMAGE_SUFFIXES:
                write_image_rgb(path, read_image_rgb(path))
        except (DataError, OSError) as error:
            path.unlink()
            reason = ("cannot be decoded as an image (corrupt, or not an image file)"
                      if isinstance(error, DataError) else str(error))
            staged.rejected.append((upload_name, reason))
            continue
        staged.accepted.append(name)
    return staged


# Module loggers of the pipeline's stages, and how far along a run is when each speaks.
STAGE_PROGRESS = {"src.local_features": 0.2, "src.pairs": 0.35, "src.matching": 0.45,
                  "src.scene_graph": 0.6, "src.geometric": 0.65, "src.reconstruction": 0.8}


class _ProgressHandler(logging.Handler):
    """Turns the pipeline's log messages into progress reports (fraction, message)."""

    def __init__(self, report: Callable[[float, str], None]) -> None:
        super().__init__(logging.INFO)
        self.report, self.fraction = report, 0.05

    def emit(self, record: logging.LogRecord) -> None:
        self.fraction = max(self.fraction, STAGE_PROGRESS.get(record.name, self.fraction))
        try:
            self.report(self.fraction, record.getMessage())
        except Exception:  # a broken progress display must not stop the run
            self.handleError(record)


def new_upload_run_name(output_dir: Path) -> str:
    """``uploads-<date>-<time>``, with a suffix if that folder exists already."""
    base = time.strftime("uploads-%Y%m%d-%H%M%S")
    name, k = base, 1
    while (Path(output_dir) / name).exists():
        name, k = f"{base}-{k}", k + 1
    return name


def run_on_uploads(files: Iterable[tuple[str, bytes]], output_dir: str | Path,
                   progress: Callable[[float, str], None] | None = None,
                   preset: str = "cpu-demo", **overrides) -> tuple[StagedUploads, Path | None]:
    """Run the geometric pipeline on uploaded photos in a new run folder
    ``output_dir/uploads-<time>/`` (its input in ``input/``); returns what was staged and the
    run folder (None when no upload is a readable image).

    The stages are main.py's for a geometric run on unlabelled data: the run folder and its
    config, ``run_geometric``, then the validated submission.
    """
    from config import get_config
    from src.geometric import GeometricConf, run_geometric
    from src.run_context import RunContext, setup_logging
    from src.utils_io import build_submission, list_test_images, write_csv_atomic, write_submission

    report = progress or (lambda fraction, text: None)
    output_dir = Path(output_dir)
    run_name = new_upload_run_name(output_dir)
    data_dir = output_dir / run_name / "input"
    report(0.02, "checking the uploaded files")
    staged = stage_uploads(files, data_dir)
    if not staged.accepted:
        return staged, None
    cfg = get_config(preset, **{**overrides, "pipeline": "geometric", "data_dir": str(data_dir),
                                "output_dir": str(output_dir), "run_name": run_name})
    setup_logging()
    handler = _ProgressHandler(report)
    stage_logger = logging.getLogger("src")
    stage_logger.addHandler(handler)
    try:
        ctx = RunContext.create(cfg)
        test_images = list_test_images(data_dir)
        with ctx.stage("geometric"):
            predictions, stage_seconds = run_geometric(
                test_images, data_dir / "test", GeometricConf.from_config(cfg),
                ctx.run_dir / "geometric", cfg.overwrite)
            write_csv_atomic(stage_seconds, ctx.run_dir / "timings_geometric.csv")
        with ctx.stage("submission"):
            write_submission(build_submission(predictions, test_images),
                             ctx.run_dir / SUBMISSION_FILE, test_images)
    finally:
        stage_logger.removeHandler(handler)
    report(1.0, f"done: {ctx.run_dir}")
    return staged, ctx.run_dir
