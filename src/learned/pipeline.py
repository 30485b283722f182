"""The learned pipeline's stages as main.py calls them: pick a device strategy, train (or load)
the multi-head ConvNeXt, score it on the held-out views, predict the test images and
cluster them into scenes with DBSCAN.

This is the one module that main.py imports for the learned and hybrid pipelines, and only
then: it (through training, the model and the datasets) brings in TensorFlow, which the
geometric pipeline, ``--help`` and the scorer never need.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from config import Config
from src.data_io import write_csv_atomic
from src.evaluation import score_subset
from src.learned.clustering import ClusterSettings, SpreadScales, cluster_all
from src.learned.dataset import image_paths, undecodable_images
from src.learned.inference import Predictions, load_run_model, predict
from src.learned.preprocessing import TrainingLabels
from src.learned.training import (TrainingConf, configure_precision, select_strategy,
                                  train_model)
from src.run_context import RunContext
from src.submission import PosePrediction, build_submission

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A trained PoseRegressor, the translation scaler it predicts through, and the global
    batch size of the device strategy it runs under."""

    model: object
    scaler: object
    batch_size: int


def train_or_load_model(cfg: Config, stage: str, labels: TrainingLabels, data_dir: Path,
                        ctx: RunContext) -> TrainedModel:
    """Train the model (stages ``all`` and ``train``, resuming an interrupted run), or load
    the run folder's trained one (stage ``infer``)."""
    strategy = select_strategy()
    configure_precision(cfg.mixed_precision, strategy)
    conf = TrainingConf.from_config(cfg)
    batch_size = conf.global_batch(strategy)
    if stage in ("all", "train"):
        with ctx.stage("train"):
            labels = without_unreadable_images(labels, data_dir / "train")
            model = train_model(conf, labels, data_dir, strategy, ctx.run_dir)
        return TrainedModel(model, labels.scaler, batch_size)
    model, scaler = load_run_model(ctx.run_dir)
    return TrainedModel(model, scaler, batch_size)


def without_unreadable_images(labels: TrainingLabels, image_root: Path) -> TrainingLabels:
    """``labels`` less the rows whose image the input pipeline cannot decode, each named in
    a warning: one bad file must not stop training (nor be trained on)."""
    paths = image_paths(labels.labels, image_root)
    bad = undecodable_images(paths)
    if not bad:
        return labels
    for index, why in bad.items():
        log.warning("training image %s %s: left out of training (an outlier wherever it is "
                    "predicted)", paths[index], why)
    kept = labels.labels.drop(index=labels.labels.index[list(bad)])
    return dataclasses.replace(labels, labels=kept)


def predict_learned(trained: TrainedModel, cfg: Config, labels: TrainingLabels,
                    test_images: pd.DataFrame, data_dir: Path, ctx: RunContext
                    ) -> tuple[list[PosePrediction], pd.DataFrame]:
    """Validation score, then the test images' poses and DBSCAN scenes.

    Returns the submission rows and the prediction table (pose, outlier probability and
    ``scene`` per image), which is also saved as ``predictions_test.csv``.
    """
    scales = SpreadScales.from_scene_stats(labels.scene_stats)
    settings = ClusterSettings.from_config(cfg)
    if len(labels.val):
        with ctx.stage("validate"):
            validate(trained, labels, data_dir, scales, settings, ctx.run_dir)
    with ctx.stage("infer"):
        test = predict(trained.model, trained.scaler, test_images, data_dir / "test",
                       trained.batch_size)
    with ctx.stage("cluster"):
        scenes = cluster_all(test.table, test.features, scales, settings)
        test.table["scene"] = scenes.to_numpy()
        test.save(ctx.run_dir)
    return test.pose_predictions(scenes), test.table


def validate(trained: TrainedModel, labels: TrainingLabels, data_dir: Path,
             scales: SpreadScales, settings: ClusterSettings, run_dir: Path) -> None:
    """Score the held-out views of the training scenes as the test set will be scored
    (poses and DBSCAN scenes); the table goes to the log and ``score_validation.csv``."""
    val = predict(trained.model, trained.scaler, labels.val, data_dir / "train",
                  trained.batch_size)
    val_scenes = cluster_all(val.table, val.features, scales, settings)
    report = score_subset(build_submission(val.pose_predictions(val_scenes)),
                          data_dir / "train_labels.csv", data_dir / "train_thresholds.csv",
                          labels.val)
    log.info("validation score (held-out views of training scenes):\n%s", report.table())
    write_csv_atomic(report.per_dataset, run_dir / "score_validation.csv")


def learned_hints(trained: TrainedModel, test_images: pd.DataFrame, data_dir: Path,
                  run_dir: Path) -> Predictions:
    """The hybrid pipeline's input from the model: each test image's outlier probability
    and backbone features (saved as ``predictions_test.csv`` / ``features_test.npy``)."""
    hints = predict(trained.model, trained.scaler, test_images, data_dir / "test",
                    trained.batch_size)
    hints.save(run_dir)
    return hints
