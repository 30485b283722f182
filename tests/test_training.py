"""Training: schedule, curriculum, learning on demo data, resuming, saved outputs."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from config import DEMO_SIZES, get_config
from src.demo_data import DemoSpec, generate_demo_dataset
from src.learned.dataset import evaluation_dataset
from src.learned.inference import Predictions, load_run_model, predict
from src.learned.losses import HEADS
from src.learned.preprocessing import prepare_training_labels
from src.learned.training import (TrainingConf, WarmupCosineDecay, build_model,
                                  configure_precision, curriculum, select_strategy, train_model)
from tests.serialization import run_serialization_test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(root, DemoSpec(**DEMO_SIZES["tiny"], seed=3))


@pytest.fixture(scope="module")
def labels(data_dir):
    return prepare_training_labels(data_dir / "train_labels.csv",
                                   data_dir / "train_thresholds.csv", 0.25, seed=40)


@pytest.fixture(scope="module")
def conf():
    return TrainingConf.from_config(get_config("test", epochs_easy=1, epochs_all=6,
                                               epochs_finetune1=1, epochs_finetune2=1,
                                               patience=10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, conf, labels, data_dir):
    """One training run shared by the tests below, with the untrained model's scores."""
    run_dir = tmp_path_factory.mktemp("run")
    strategy = select_strategy()
    configure_precision("auto", strategy)
    val = evaluation_dataset(labels.val, data_dir / "train", labels.scaler, conf.image_size, 8)
    keras.utils.set_random_seed(conf.seed)
    untrained = build_model(conf, labels.scaler, strategy)
    untrained.compile(optimizer="adam")
    before = untrained.evaluate(val, verbose=0, return_dict=True)
    model = train_model(conf, labels, data_dir, strategy, run_dir)
    after = model.evaluate(val, verbose=0, return_dict=True)
    return run_dir, model, before, after


def test_schedule_warms_up_then_decays_and_serialises():
    schedule = WarmupCosineDecay(1e-8, 1e-4, warmup_steps=10, total_steps=110)
    lrs = np.array([float(schedule(s)) for s in range(0, 130)])
    assert lrs[0] == pytest.approx(1e-8)
    assert lrs[10] == pytest.approx(1e-4)
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:111]) <= 1e-12)
    assert lrs[110] == pytest.approx(0.0, abs=1e-12) and lrs[129] == pytest.approx(0.0, abs=1e-12)
    assert lrs[60] == pytest.approx(0.5e-4, rel=1e-3)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(again(37)) == pytest.approx(float(schedule(37)))


def test_schedule_serialization_round_trip_keeps_config_and_values():
    schedule = WarmupCosineDecay(1e-6, 3e-4, warmup_steps=7, total_steps=50, final_lr=1e-7)
    revived = run_serialization_test(schedule)
    for step in (0, 3, 7, 20, 50, 80):
        assert float(revived(step)) == float(schedule(step))


def test_curriculum_follows_the_published_design(labels):
    published = TrainingConf.from_config(get_config("kaggle", backbone_weights=__file__))
    stages = curriculum(published, labels.train, labels.easy_train)
    assert [s.name for s in stages] == ["easy", "all", "finetune1", "finetune2"]
    assert [s.epochs for s in stages] == [5, 40, 20, 20]
    assert [s.peak_lr for s in stages] == [1e-4, 1e-5, 1e-6, 1e-7]
    assert [s.freeze_ratio for s in stages] == [1.0, 1.0, 0.8, 0.6]
    assert len(stages[0].train_rows) < len(stages[1].train_rows)
    # A random backbone is trained from the start: frozen random features help nobody.
    random_backbone = TrainingConf.from_config(get_config("test"))
    assert curriculum(random_backbone, labels.train, labels.easy_train)[0].freeze_ratio == 0.0


def test_training_conf_holds_the_configs_training_fields():
    cfg = get_config("kaggle")
    conf = TrainingConf.from_config(cfg)
    for name, value in dataclasses.asdict(conf).items():
        assert value == getattr(cfg, name), name
    assert conf.loss_weights == {"quaternion": 10.0, "translation": 0.01, "center": 0.001,
                                 "outlier": 10.0}
    assert set(conf.loss_weights) == set(HEADS)
    assert conf.global_batch(tf.distribute.get_strategy()) == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.seed = 1


def test_cpu_uses_float32():
    assert configure_precision("auto", tf.distribute.get_strategy()) == "float32"


@pytest.mark.slow
def test_training_learns_on_demo_data(trained):
    _, _, before, after = trained
    assert after["quat_similarity"] > before["quat_similarity"] + 0.05
    assert after["translation_mae"] < before["translation_mae"]
    assert after["outlier_accuracy"] >= before["outlier_accuracy"]


@pytest.mark.slow
def test_training_writes_every_output(trained):
    run_dir = trained[0]
    for name in ("model.keras", "backbone.keras", "history.csv", "state.json",
                 "plots/loss.png", "plots/quaternion_loss.png", "plots/translation_loss.png",
                 "plots/outlier_loss.png", "plots/center_loss.png",
                 "stages/finetune2.weights.h5", "history/all.csv"):
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["stage"].unique()) == ["easy", "all", "finetune1", "finetune2"]
    assert len(history) == 1 + 6 + 1 + 1
    assert json.loads((run_dir / "state.json").read_text())["stages_done"] == [
        "easy", "all", "finetune1", "finetune2"]
    assert not any((run_dir / "backup").rglob("*.h5"))  # cleaned after each finished stage


@pytest.mark.slow
def test_saved_run_predicts_like_the_model_in_memory(trained, labels, data_dir, tmp_path):
    run_dir, model, _, _ = trained
    labels.save(run_dir)  # the labels stage writes the scaler beside the model
    loaded, scaler = load_run_model(run_dir)
    a = predict(model, labels.scaler, labels.val, data_dir / "train", 8)
    b = predict(loaded, scaler, labels.val, data_dir / "train", 8)
    np.testing.assert_allclose(a.table[["qx", "qy", "qz", "qw", "tx", "ty", "tz"]].to_numpy(),
                               b.table[["qx", "qy", "qz", "qw", "tx", "ty", "tz"]].to_numpy(),
                               atol=1e-5)
    assert a.features.shape[0] == len(labels.val)
    a.save(tmp_path)
    back = Predictions.load(tmp_path)
    np.testing.assert_allclose(back.features, a.features)
    scenes = pd.Series(["cluster0"] * (len(a.table) - 1) + ["outliers"])
    rows = a.pose_predictions(scenes)
    assert np.all(np.isnan(rows[-1].R_cw)) and np.all(np.isfinite(rows[0].R_cw))


class _CrashAtEpochEnd(keras.callbacks.Callback):
    """Simulates a crash (pre-emption, killed kernel) at the n-th epoch end of the run,
    counted across stages (the same callback object is given to every stage)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_epoch_end(self, epoch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_completed_epoch(tmp_path, labels, data_dir):
    conf = TrainingConf.from_config(get_config("test", epochs_easy=1, epochs_all=4,
                                               epochs_finetune1=0, epochs_finetune2=0,
                                               patience=10))
    strategy = tf.distribute.get_strategy()
    with pytest.raises(KeyboardInterrupt):
        # Epoch ends: 1 = the only epoch of "easy", 2 and 3 = epochs 0 and 1 of "all".
        train_model(conf, labels, data_dir, strategy, tmp_path,
                    extra_callbacks=[_CrashAtEpochEnd(3)])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages_done"] == ["easy"]
    assert any((tmp_path / "backup" / "all").iterdir())
    logged = pd.read_csv(tmp_path / "history" / "all.csv")
    assert list(logged["epoch"]) == [0, 1]
    train_model(conf, labels, data_dir, strategy, tmp_path)
    logged = pd.read_csv(tmp_path / "history" / "all.csv")
    assert list(logged["epoch"]) == [0, 1, 2, 3]  # resumed at epoch 2, nothing repeated
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages_done"] == ["easy", "all", "finetune1", "finetune2"]
