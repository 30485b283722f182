"""Inference: poses, outlier probabilities and backbone features for a list of images.

Works on the model in memory or on a saved run folder (``model.keras`` and
``translation_scaler.joblib``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from src.data_io import atomic_path, write_csv_atomic
from src.geometry import canonical_quat, quat_xyzw_to_rotation
from src.learned.dataset import image_dataset, undecodable_images
from src.learned.model_architecture import PoseRegressor
from src.learned.preprocessing import load_scaler
from src.submission import OUTLIER_SCENE, QUAT_COLUMNS, TRANSLATION_COLUMNS, PosePrediction

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """One row per image: dataset, image, qx..qw (unit, w >= 0), tx..tz (world units),
    outlier_prob; and the backbone features (N, D) in the same order."""

    table: pd.DataFrame
    features: np.ndarray

    def save(self, run_dir: Path, name: str = "test") -> None:
        write_csv_atomic(self.table, Path(run_dir) / f"predictions_{name}.csv")
        with atomic_path(Path(run_dir) / f"features_{name}.npy") as tmp:
            np.save(tmp, self.features)

    @classmethod
    def load(cls, run_dir: Path, name: str = "test") -> "Predictions":
        return cls(pd.read_csv(Path(run_dir) / f"predictions_{name}.csv"),
                   np.load(Path(run_dir) / f"features_{name}.npy"))

    def pose_predictions(self, scenes: pd.Series) -> list[PosePrediction]:
        """Submission rows: each image's scene and pose (NaN pose for outliers)."""
        R = quat_xyzw_to_rotation(self.table[QUAT_COLUMNS].to_numpy())
        t = self.table[TRANSLATION_COLUMNS].to_numpy()
        out = []
        for i, (dataset, image, scene) in enumerate(zip(self.table["dataset"],
                                                         self.table["image"], scenes)):
            if scene == OUTLIER_SCENE:
                out.append(PosePrediction(dataset, image, scene, np.full((3, 3), np.nan),
                                          np.full(3, np.nan)))
            else:
                out.append(PosePrediction(dataset, image, scene, R[i], t[i]))
        return out


def load_run_model(run_dir: Path) -> tuple[PoseRegressor, object]:
    """The trained model and translation scaler saved in a run folder."""
    run_dir = Path(run_dir)
    path = run_dir / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model in {run_dir} (expected {path}); run the "
                                f"train stage first")
    return keras.models.load_model(path), load_scaler(run_dir / "translation_scaler.joblib")


def predict(model: PoseRegressor, scaler, images: pd.DataFrame, image_root: Path,
            batch_size: int) -> Predictions:
    """Run the model on ``images`` (columns dataset, image) under ``image_root/<dataset>/``.

    An image the input pipeline cannot decode (checked first, :func:`undecodable_images`)
    gets no pose (NaN), outlier probability 1 and zero features, and a warning names it: it
    becomes an outlier row, never a failed run."""
    paths = [Path(image_root) / d / i for d, i in zip(images["dataset"], images["image"])]
    bad = undecodable_images(paths)
    if bad:
        log.warning("%d image(s) cannot be read and will be outliers: %s", len(bad),
                    "; ".join(f"{paths[i]} {why}" for i, why in list(bad.items())[:10]))
    good = [i for i in range(len(paths)) if i not in bad]
    log.info("inference on %d images", len(good))
    n = len(paths)
    q, t = np.full((n, 4), np.nan), np.full((n, 3), np.nan)
    outlier_prob = np.ones(n)
    features = np.zeros((n, 1))  # the width of no features at all: every image unreadable
    if good:
        outputs = {"quaternion": [], "translation": [], "outlier": [], "features": []}
        for batch in image_dataset([paths[i] for i in good], model.image_size, batch_size):
            for key, value in model.infer(batch).items():
                outputs[key].append(np.asarray(value, np.float64))
        stacked = {k: np.concatenate(v) for k, v in outputs.items()}
        q[good] = canonical_quat(stacked["quaternion"].reshape(-1, 4))
        t[good] = scaler.inverse_transform(stacked["translation"].reshape(-1, 3))
        outlier_prob[good] = stacked["outlier"].reshape(-1)
        good_features = stacked["features"].reshape(len(good), -1)
        features = np.zeros((n, good_features.shape[1]))
        features[good] = good_features
    table = images[["dataset", "image"]].reset_index(drop=True).copy()
    table[QUAT_COLUMNS] = q
    table[TRANSLATION_COLUMNS] = t
    table["outlier_prob"] = outlier_prob
    return Predictions(table=table, features=features)
