"""Labels and their geometry: parsing, targets, difficulty, splits, scaler, scene statistics.

A labels table (``train_labels.csv`` layout) becomes a DataFrame with one row per image:

==================  ===========================================================
``dataset, scene,   as in the file
image``
``is_outlier``      scene is ``outliers`` (the outlier head's target)
``has_pose``        the pose is finite (NaN poses give no pose target)
``r00 .. r22``      world-to-camera rotation R_cw, row-major
``tx, ty, tz``      world-to-camera translation t_cw
``qx, qy, qz, qw``  R_cw as a unit quaternion, x y z w, w >= 0
``cx, cy, cz``      camera centre C = -R_cw^T t_cw
``difficulty``      1 / (min threshold of the scene + 0.01), as published
==================  ===========================================================
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from src.geometry import camera_centers, is_rotation, rotation_to_quat_xyzw
from src.data_io import (LABEL_COLUMNS, DataError, atomic_path, parse_numbers, parse_thresholds,
                         write_csv_atomic)
from src.submission import OUTLIER_SCENE, QUAT_COLUMNS, TRANSLATION_COLUMNS, read_submission

log = logging.getLogger(__name__)

ROTATION_COLUMNS = [f"r{i}{j}" for i in range(3) for j in range(3)]
CENTER_COLUMNS = ["cx", "cy", "cz"]


# --------------------------------------------------------------------------- reading
def _require_columns(frame: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")


def parse_labels(frame: pd.DataFrame, name: str = "labels") -> pd.DataFrame:
    """Parse a labels table of text columns into the per-image geometry table (see module doc).

    Raises DataError naming ``name``, the line and the field for a malformed row: wrong count
    of numbers, text that is not a number, a partly-NaN pose, or a matrix that is not a
    rotation. Rows whose pose is all NaN are kept with ``has_pose = False``.
    """
    _require_columns(frame, LABEL_COLUMNS, name)
    n = len(frame)
    R = np.full((n, 3, 3), np.nan)
    t = np.full((n, 3), np.nan)
    for row, (rot_text, t_text, dataset, scene, image) in enumerate(zip(
            frame["rotation_matrix"], frame["translation_vector"], frame["dataset"],
            frame["scene"], frame["image"])):
        where = f"{name}, line {row + 2}"
        for field_name, value in (("dataset", dataset), ("scene", scene), ("image", image)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}, field {field_name}: empty")
        r = parse_numbers(rot_text, 9, f"{where}, field rotation_matrix")
        v = parse_numbers(t_text, 3, f"{where}, field translation_vector")
        r_nan, v_nan = np.isnan(r), np.isnan(v)
        if r_nan.all() != v_nan.all() or (r_nan.any() and not r_nan.all()) or (
                v_nan.any() and not v_nan.all()):
            raise DataError(f"{where}: the pose must be all numbers or all nan, got "
                            f"rotation {rot_text!r} and translation {t_text!r}")
        if not r_nan.any():
            if not is_rotation(r.reshape(3, 3), atol=1e-3):
                raise DataError(f"{where}, field rotation_matrix: not a rotation "
                                f"(orthonormal with det +1): {rot_text!r}")
            R[row] = r.reshape(3, 3)
            t[row] = v
    if frame.duplicated(subset=["dataset", "image"]).any():
        dup = int(np.argmax(frame.duplicated(subset=["dataset", "image"]).to_numpy()))
        raise DataError(f"{name}, line {dup + 2}: image {frame['image'].iloc[dup]!r} appears "
                        f"twice in dataset {frame['dataset'].iloc[dup]!r}")

    out = frame[["dataset", "scene", "image"]].reset_index(drop=True).copy()
    out["is_outlier"] = out["scene"] == OUTLIER_SCENE
    out["has_pose"] = np.isfinite(t).all(axis=1)
    unposed_scene = out["has_pose"].eq(False) & ~out["is_outlier"]
    if unposed_scene.any():
        log.warning("%s: %d image(s) of real scenes have a nan pose; they get no pose target",
                    name, int(unposed_scene.sum()))
    out[ROTATION_COLUMNS] = R.reshape(n, 9)
    out[TRANSLATION_COLUMNS] = t
    quats = np.full((n, 4), np.nan)
    centers = np.full((n, 3), np.nan)
    posed = out["has_pose"].to_numpy()
    if posed.any():
        quats[posed] = rotation_to_quat_xyzw(R[posed])
        centers[posed] = camera_centers(R[posed], t[posed])
    out[QUAT_COLUMNS] = quats
    out[CENTER_COLUMNS] = centers
    return out


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read and parse a ``train_labels.csv``-layout file (see :func:`parse_labels`)."""
    frame = read_submission(path)
    if frame.empty:
        raise DataError(f"{path}: no rows")
    return parse_labels(frame, name=str(path))


def read_thresholds(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``train_thresholds.csv``: columns dataset, scene, thresholds (array), min_threshold,
    difficulty = 1 / (min threshold + 0.01)."""
    frame = read_submission(path)
    _require_columns(frame, ["dataset", "scene", "thresholds"], str(path))
    values = []
    for row, text in enumerate(frame["thresholds"]):
        values.append(parse_thresholds(text, f"{path}, line {row + 2}, field thresholds"))
    out = frame[["dataset", "scene"]].copy()
    out["thresholds"] = values
    out["min_threshold"] = [float(v.min()) for v in values]
    out["difficulty"] = 1.0 / (out["min_threshold"] + 0.01)
    return out


def attach_difficulty(labels: pd.DataFrame, thresholds: pd.DataFrame) -> pd.DataFrame:
    """Add the scene difficulty to each label row (NaN for outliers, which have no scene)."""
    merged = labels.merge(thresholds[["dataset", "scene", "difficulty"]],
                          on=["dataset", "scene"], how="left", validate="many_to_one")
    lacking = merged["difficulty"].isna() & ~merged["is_outlier"]
    if lacking.any():
        pairs = sorted(set(zip(merged.loc[lacking, "dataset"], merged.loc[lacking, "scene"])))
        raise DataError(f"thresholds: no row for scene(s) {pairs[:5]}")
    return merged


# --------------------------------------------------------------------------- arrays
def rotations(labels: pd.DataFrame) -> np.ndarray:
    """R_cw of each row, (N, 3, 3)."""
    return labels[ROTATION_COLUMNS].to_numpy(np.float64).reshape(-1, 3, 3)


def translations(labels: pd.DataFrame) -> np.ndarray:
    """t_cw of each row, (N, 3)."""
    return labels[TRANSLATION_COLUMNS].to_numpy(np.float64)


# --------------------------------------------------------------------------- splits
def split_train_val(labels: pd.DataFrame, val_fraction: float, seed: int,
                    min_scene_images: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split: ``val_fraction`` of each (dataset, scene) group goes to validation.

    Groups (outliers included, per dataset) with fewer than ``min_scene_images`` images stay
    whole in training, and at least 1 image of each split group stays in each side.
    Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    val_index = []
    for _, group in labels.groupby(["dataset", "scene"], sort=True):
        n = len(group)
        if n < min_scene_images or val_fraction <= 0:
            continue
        n_val = min(n - 1, max(1, int(round(n * val_fraction))))
        val_index.extend(rng.choice(group.index.to_numpy(), size=n_val, replace=False))
    is_val = labels.index.isin(val_index)
    return labels[~is_val].copy(), labels[is_val].copy()


def easy_datasets(labels: pd.DataFrame) -> list[str]:
    """Datasets whose mean inlier difficulty is below the mean over datasets (all when none
    is: equal difficulties)."""
    inliers = labels[~labels["is_outlier"] & labels["difficulty"].notna()]
    if inliers.empty:
        return sorted(labels["dataset"].unique())
    per_dataset = inliers.groupby("dataset")["difficulty"].mean()
    easy = per_dataset[per_dataset < per_dataset.mean()]
    return sorted(easy.index if len(easy) else per_dataset.index)


# --------------------------------------------------------------------------- scaler
def fit_translation_scaler(labels: pd.DataFrame) -> StandardScaler:
    """StandardScaler of t_cw fitted on posed inlier rows only (outliers have no pose)."""
    posed = labels["has_pose"] & ~labels["is_outlier"]
    if not posed.any():
        raise DataError("labels: no posed inlier image to fit the translation scaler on")
    return StandardScaler().fit(translations(labels[posed]))


def save_scaler(scaler: StandardScaler, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        joblib.dump(scaler, tmp)
    return Path(path)


def load_scaler(path: str | os.PathLike) -> StandardScaler:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"translation scaler not found: {path}")
    return joblib.load(path)


# --------------------------------------------------------------------------- statistics
def scene_statistics(labels: pd.DataFrame) -> pd.DataFrame:
    """Spread of poses within each scene, the scales the clustering stage works in.

    Per (dataset, scene) of posed inliers: images; ``quat_spread_max`` / ``_p95``, distances of
    the sign-aligned quaternions to their normalised mean; ``trans_spread_max`` / ``_p95``,
    distances of t_cw to their mean; ``center_spread_max`` / ``_p95``, the same for centres.
    """
    rows = []
    posed = labels[labels["has_pose"] & ~labels["is_outlier"]]
    for (dataset, scene), group in posed.groupby(["dataset", "scene"], sort=True):
        q = group[QUAT_COLUMNS].to_numpy()
        # q and -q are one rotation: align signs to the first before averaging.
        q = np.where((q @ q[0])[:, None] < 0, -q, q)
        q_mean = q.mean(axis=0)
        q_mean /= np.linalg.norm(q_mean)
        quat_dist = np.linalg.norm(q - q_mean, axis=1)
        t = group[TRANSLATION_COLUMNS].to_numpy()
        c = group[CENTER_COLUMNS].to_numpy()
        t_dist = np.linalg.norm(t - t.mean(axis=0), axis=1)
        c_dist = np.linalg.norm(c - c.mean(axis=0), axis=1)
        rows.append({
            "dataset": dataset, "scene": scene, "images": len(group),
            "quat_spread_max": quat_dist.max(), "quat_spread_p95": np.percentile(quat_dist, 95),
            "trans_spread_max": t_dist.max(), "trans_spread_p95": np.percentile(t_dist, 95),
            "center_spread_max": c_dist.max(), "center_spread_p95": np.percentile(c_dist, 95),
        })
    columns = ["dataset", "scene", "images", "quat_spread_max", "quat_spread_p95",
               "trans_spread_max", "trans_spread_p95", "center_spread_max", "center_spread_p95"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- the stage
@dataclass
class TrainingLabels:
    """Everything the later stages need from the training labels."""

    labels: pd.DataFrame  # all rows, parsed, with difficulty and a `split` column
    thresholds: pd.DataFrame
    easy_datasets: list[str]
    scaler: StandardScaler
    scene_stats: pd.DataFrame

    @property
    def train(self) -> pd.DataFrame:
        return self.labels[self.labels["split"] == "train"]

    @property
    def val(self) -> pd.DataFrame:
        return self.labels[self.labels["split"] == "val"]

    @property
    def easy_train(self) -> pd.DataFrame:
        return self.train[self.train["dataset"].isin(self.easy_datasets)]

    def save(self, run_dir: str | os.PathLike) -> None:
        """Write the scaler (joblib), the split and the scene statistics (CSV) to run_dir."""
        run_dir = Path(run_dir)
        save_scaler(self.scaler, run_dir / "translation_scaler.joblib")
        write_csv_atomic(self.labels[["dataset", "scene", "image", "split", "difficulty"]],
                         run_dir / "split.csv")
        write_csv_atomic(self.scene_stats, run_dir / "scene_stats.csv")


def load_training_labels(data_dir: str | os.PathLike, val_fraction: float, seed: int,
                         run_dir: str | os.PathLike, required: bool = True
                         ) -> "TrainingLabels | None":
    """:func:`prepare_training_labels` of ``data_dir``'s ``train_labels.csv`` and
    ``train_thresholds.csv``, saved in ``run_dir``. Without ``train_labels.csv`` a run that
    does not need it (``required=False``: the geometric pipeline) gets None; one that does
    gets FileNotFoundError naming the file."""
    labels_csv = Path(data_dir) / "train_labels.csv"
    if not labels_csv.is_file() and not required:
        log.info("no %s: no training labels (the geometric pipeline needs none)", labels_csv)
        return None
    if not labels_csv.is_file():
        raise FileNotFoundError(f"training labels not found: {labels_csv} (the learned and "
                                f"hybrid pipelines train on them; --pipeline geometric needs "
                                f"none)")
    return prepare_training_labels(labels_csv, Path(data_dir) / "train_thresholds.csv",
                                   val_fraction, seed, save_to=run_dir)


def prepare_training_labels(labels_csv: str | os.PathLike, thresholds_csv: str | os.PathLike,
                            val_fraction: float, seed: int,
                            save_to: str | os.PathLike | None = None) -> TrainingLabels:
    """Read, parse and split the training labels; fit the scaler on the training split.
    With ``save_to`` (a run folder) the split, scaler and scene statistics are saved there."""
    thresholds = read_thresholds(thresholds_csv)
    labels = attach_difficulty(read_labels(labels_csv), thresholds)
    train, val = split_train_val(labels, val_fraction, seed)
    labels["split"] = np.where(labels.index.isin(val.index), "val", "train")
    log.info("labels: %d images in %d datasets, %d scenes; %d train / %d validation",
             len(labels), labels["dataset"].nunique(),
             labels.loc[~labels["is_outlier"], ["dataset", "scene"]].drop_duplicates().shape[0],
             len(train), len(val))
    prepared = TrainingLabels(labels=labels, thresholds=thresholds,
                              easy_datasets=easy_datasets(train),
                              scaler=fit_translation_scaler(train),
                              scene_stats=scene_statistics(train))
    if save_to is not None:
        prepared.save(save_to)
    return prepared
