"""Training: device strategy, precision, learning-rate schedule and the curriculum.

The curriculum (published design): warm-up on the easy scenes, then all training scenes,
then two fine-tuning stages that unfreeze the top of the backbone (``1 - freeze_ratio_ft1``,
then ``1 - freeze_ratio_ft2`` of its layers; normalisation layers stay frozen). In the first
two stages a pretrained backbone is frozen; a randomly initialised one is trained, since
frozen random features would only hold the heads back.

Every stage is resumable: ``BackupAndRestore`` checkpoints each epoch, a finished stage
saves its weights and is recorded in ``state.json``, and a restarted run skips finished
stages and resumes the interrupted one from its last completed epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from src.data_io import atomic_path, write_csv_atomic
from src.learned.losses import HEADS
from src.learned.model_architecture import PoseRegressor, set_backbone_trainable
from src.plots import plot_history

log = logging.getLogger(__name__)
# The columns of the training history that get a loss-curve plot.
HISTORY_PLOTS = ("loss", *(f"{head}_loss" for head in HEADS), "quat_similarity",
                 "translation_mae")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainingConf:
    """What training reads from the configuration: the model, the curriculum, the batch and
    the seed. Each field is the config.Config field of the same name, documented there."""

    # The model
    backbone: str
    backbone_weights: str
    image_size: int
    head_units: int
    dropout: float
    l2: float
    loss_weight_quaternion: float
    loss_weight_translation: float
    loss_weight_center: float
    loss_weight_outlier: float
    # The curriculum: epochs, peak learning rates and frozen backbone share per stage
    epochs_easy: int
    epochs_all: int
    epochs_finetune1: int
    epochs_finetune2: int
    warmup_peak_lr: float
    lr_all: float
    lr_finetune1: float
    lr_finetune2: float
    freeze_ratio_ft1: float
    freeze_ratio_ft2: float
    warmup_fraction: float
    warmup_initial_lr: float
    patience: int
    # Batches and randomness
    batch_size_per_replica: int
    seed: int

    @classmethod
    def from_config(cls, cfg) -> "TrainingConf":
        """The training fields of a config.Config."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight per loss term, keyed by head (losses.HEADS)."""
        return {"quaternion": self.loss_weight_quaternion,
                "translation": self.loss_weight_translation,
                "center": self.loss_weight_center, "outlier": self.loss_weight_outlier}

    def global_batch(self, strategy: tf.distribute.Strategy) -> int:
        """Images per step over all replicas of ``strategy``."""
        return self.batch_size_per_replica * strategy.num_replicas_in_sync


# --------------------------------------------------------------------------- devices
def select_strategy() -> tf.distribute.Strategy:
    """TPU if one is attached, several workers from TF_CONFIG, several GPUs, else default.

    A TPU is looked for only where there are signs of one (TPU_NAME, or a TPU VM's
    /dev/accel0), so that CPU and GPU machines never probe the network for it.
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:  # TF would take the whole GPU otherwise, leaving none for torch's features
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    tpu_name = os.environ.get("TPU_NAME") or ("local" if Path("/dev/accel0").exists() else "")
    if tpu_name:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif "TF_CONFIG" in os.environ:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy: %s with %d replica(s)", type(strategy).__name__,
             strategy.num_replicas_in_sync)
    return strategy


def device_kind(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def configure_precision(setting: str, strategy: tf.distribute.Strategy) -> str:
    """Set the global Keras dtype policy: bfloat16 on TPU, float16 on GPU, float32 on CPU
    for ``auto``. Losses are always computed in float32 (heads output float32)."""
    policy = setting
    if setting == "auto":
        policy = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(
            device_kind(strategy), "float32")
    keras.mixed_precision.set_dtype_policy(policy)
    log.info("precision policy: %s", policy)
    return policy


# --------------------------------------------------------------------------- schedule
@keras.saving.register_keras_serializable(package="imc")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``initial_lr`` to ``peak_lr`` over ``warmup_steps``, then cosine
    decay to ``final_lr`` at ``total_steps`` (held there afterwards)."""

    def __init__(self, initial_lr: float, peak_lr: float, warmup_steps: int, total_steps: int,
                 final_lr: float = 0.0):
        self.initial_lr = float(initial_lr)
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.final_lr = float(final_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        warm_lr = self.initial_lr + (self.peak_lr - self.initial_lr) * step / warmup
        progress = tf.clip_by_value((step - self.warmup_steps)
                                    / float(self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine_lr = self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (
            1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm_lr, cosine_lr)

    def get_config(self) -> dict:
        return {"initial_lr": self.initial_lr, "peak_lr": self.peak_lr,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "final_lr": self.final_lr}


# --------------------------------------------------------------------------- model
def build_model(conf: TrainingConf, scaler, strategy: tf.distribute.Strategy) -> PoseRegressor:
    """The pose regressor for this configuration, built inside the strategy's scope."""
    with strategy.scope():
        model = PoseRegressor(
            backbone_name=conf.backbone, image_size=conf.image_size,
            head_units=conf.head_units, dropout=conf.dropout, l2=conf.l2,
            loss_weights=conf.loss_weights, translation_mean=scaler.mean_,
            translation_scale=scaler.scale_, backbone_weights=conf.backbone_weights)
        model.build_for_inputs()
    return model


# --------------------------------------------------------------------------- curriculum
@dataclass(frozen=True)
class Stage:
    """One curriculum stage: which rows, how long, how fast, how much backbone is frozen."""

    name: str
    train_rows: pd.DataFrame
    epochs: int
    peak_lr: float
    freeze_ratio: float


def curriculum(conf: TrainingConf, train: pd.DataFrame, easy_train: pd.DataFrame
               ) -> list[Stage]:
    """The four stages of the published design for these training rows."""
    frozen = 1.0 if conf.backbone_weights else 0.0
    return [
        Stage("easy", easy_train, conf.epochs_easy, conf.warmup_peak_lr, frozen),
        Stage("all", train, conf.epochs_all, conf.lr_all, frozen),
        Stage("finetune1", train, conf.epochs_finetune1, conf.lr_finetune1,
              conf.freeze_ratio_ft1),
        Stage("finetune2", train, conf.epochs_finetune2, conf.lr_finetune2,
              conf.freeze_ratio_ft2),
    ]


class _State:
    """Which stages of a run have finished (``state.json`` in the run folder)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.json"
        self.done: list[str] = (json.loads(self.path.read_text())["stages_done"]
                                if self.path.is_file() else [])

    def mark_done(self, stage: str) -> None:
        self.done.append(stage)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"stages_done": self.done}, indent=2))


def train_curriculum(model: PoseRegressor, stages: list[Stage], make_train_dataset,
                     val_dataset: tf.data.Dataset | None, conf: TrainingConf, run_dir: Path,
                     strategy: tf.distribute.Strategy,
                     extra_callbacks: list | None = None) -> pd.DataFrame:
    """Run the stages in order (skipping finished ones) and return the combined history.

    ``make_train_dataset(rows) -> tf.data.Dataset`` builds a stage's input pipeline.
    Writes ``history/<stage>.csv``, ``stages/<stage>.weights.h5`` and ``state.json``.
    """
    run_dir = Path(run_dir)
    state = _State(run_dir)
    global_batch = conf.global_batch(strategy)
    for index, stage in enumerate(stages):
        weights_path = run_dir / "stages" / f"{stage.name}.weights.h5"
        if stage.name in state.done:
            log.info("stage %s: finished earlier, loading its weights", stage.name)
            model.load_weights(weights_path)
            continue
        if stage.epochs == 0 or stage.train_rows.empty:
            log.info("stage %s: skipped (%d epochs, %d images)", stage.name, stage.epochs,
                     len(stage.train_rows))
            state.mark_done(stage.name)
            _save_weights(model, weights_path)
            continue
        steps = math.ceil(len(stage.train_rows) / global_batch)
        schedule = WarmupCosineDecay(conf.warmup_initial_lr, stage.peak_lr,
                                     warmup_steps=int(conf.warmup_fraction * steps * stage.epochs),
                                     total_steps=steps * stage.epochs)
        with strategy.scope():
            trainable = set_backbone_trainable(model.backbone, stage.freeze_ratio)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule))
        log.info("stage %d/%d %s: %d images, %d epochs x %d steps, peak lr %.1e, "
                 "%d/%d backbone layers trainable", index + 1, len(stages), stage.name,
                 len(stage.train_rows), stage.epochs, steps, stage.peak_lr, trainable,
                 len(model.backbone.layers))
        (run_dir / "history").mkdir(parents=True, exist_ok=True)
        monitor = "val_loss" if val_dataset is not None else "loss"
        callbacks = [
            keras.callbacks.BackupAndRestore(str(run_dir / "backup" / stage.name)),
            keras.callbacks.CSVLogger(str(run_dir / "history" / f"{stage.name}.csv"),
                                      append=True),
            keras.callbacks.EarlyStopping(monitor=monitor, patience=conf.patience,
                                          restore_best_weights=True),
            *(extra_callbacks or []),
        ]
        model.fit(make_train_dataset(stage.train_rows), validation_data=val_dataset,
                  epochs=stage.epochs, callbacks=callbacks, verbose=1 if _is_tty() else 2)
        _save_weights(model, weights_path)
        state.mark_done(stage.name)
    return combined_history(run_dir, [s.name for s in stages])


def _is_tty() -> bool:
    return os.isatty(2)


def _save_weights(model: keras.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name.replace(".weights.h5", ".tmp.weights.h5"))
    model.save_weights(tmp)
    os.replace(tmp, path)


def combined_history(run_dir: Path, stage_names: list[str]) -> pd.DataFrame:
    """All stages' per-epoch logs in one table with ``stage`` and a running ``epoch``."""
    parts = []
    for name in stage_names:
        path = Path(run_dir) / "history" / f"{name}.csv"
        if path.is_file() and path.stat().st_size > 0:
            part = pd.read_csv(path)
            part.insert(0, "stage", name)
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["stage", "epoch", "global_epoch"])
    history = pd.concat(parts, ignore_index=True)
    history.insert(1, "global_epoch", np.arange(len(history)))
    return history


# --------------------------------------------------------------------------- outputs
def save_training_outputs(model: PoseRegressor, history: pd.DataFrame, run_dir: Path) -> None:
    """Full model, backbone (the feature extractor), history CSV and loss-curve PNGs."""
    run_dir = Path(run_dir)
    for obj, name in ((model, "model.keras"), (model.backbone, "backbone.keras")):
        with atomic_path(run_dir / name) as tmp:
            obj.save(tmp)
    write_csv_atomic(history, run_dir / "history.csv")
    plot_history(history, run_dir / "plots", HISTORY_PLOTS)


def train_model(conf: TrainingConf, labels, data_dir: Path, strategy: tf.distribute.Strategy,
                run_dir: Path, extra_callbacks: list | None = None) -> PoseRegressor:
    """The whole training stage: pipelines, model, curriculum, saved outputs.

    ``labels`` is the preprocessing stage's TrainingLabels; images are read from
    ``data_dir/train``.
    """
    from src.learned.dataset import evaluation_dataset, training_dataset

    image_root = Path(data_dir) / "train"
    global_batch = conf.global_batch(strategy)
    static = isinstance(strategy, tf.distribute.TPUStrategy)  # TPUs need static shapes
    val_dataset = (evaluation_dataset(labels.val, image_root, labels.scaler, conf.image_size,
                                      global_batch) if len(labels.val) else None)

    def make_train_dataset(rows):
        return training_dataset(rows, image_root, labels.scaler, conf.image_size, global_batch,
                                seed=conf.seed,
                                drop_remainder=static and len(rows) >= global_batch)

    keras.utils.set_random_seed(conf.seed)
    model = build_model(conf, labels.scaler, strategy)
    stages = curriculum(conf, labels.train, labels.easy_train)
    history = train_curriculum(model, stages, make_train_dataset, val_dataset, conf, run_dir,
                               strategy, extra_callbacks)
    save_training_outputs(model, history, run_dir)
    return model
