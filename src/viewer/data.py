"""What the viewer (``src/viewer/app.py``) shows, as plain functions with no Streamlit in them:
the data of a run folder. Pictures of it are drawn by ``src.viewer.figures``; runs on uploaded
photos are made by ``src.viewer.uploads``.

A run folder (``outputs/<run>``) is read, never written: its ``submission.csv`` (both
pipelines write it), its stage timings, and, for the geometric pipeline, the caches under
``geometric/<dataset>/`` through the project's own loaders (``load_all_features``,
``load_pair`` / ``load_verified_matches``, ``load_models``). Scores come from
``src.evaluation``; the labels are the run's ``data_dir/test_labels.csv`` when present.

Poses are world-to-camera (``x_cam = R_cw @ X + t_cw``, centre ``C = -R_cw.T @ t_cw``);
a camera looks along the third row of ``R_cw``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.data_io import parse_numbers, parse_thresholds
from src.evaluation import ScoreReport, registration_errors, score_submission, true_scenes
from src.geometric.h5cache import read_cache_config
from src.geometric.matching import load_pair, load_verified_matches
from src.geometric.reconstruction import Model, load_models
from src.geometry import apply_similarity, camera_centers, rotation_angle_deg, umeyama_similarity
from src.plots import cluster_order
from src.submission import OUTLIER_SCENE, read_submission

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SUBMISSION_FILE = "submission.csv"


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
        thresholds[(rec.dataset, rec.scene)] = parse_thresholds(
            rec.thresholds, f"{run.thresholds_csv}, line {row + 2}, field thresholds")
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
    """Every model cached by the reconstruction stage for a dataset: (folder, model). A
    scene's mappings sit in folders of its own (per mapper, per camera choice, redone with
    more effort), so every ``models`` folder under ``sfm/`` is read."""
    found = []
    for models_dir in sorted(Path(run_dir).glob(f"geometric/{dataset}/sfm/**/models")):
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
