"""The pose regressor: outputs, saving, weights files, freezing, and distributed equivalence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from src.learned.model_architecture import PoseRegressor, build_backbone, set_backbone_trainable
from tests.serialization import run_serialization_test

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    m = PoseRegressor("convnext_micro_scratch", 32, head_units=8, translation_mean=(1, 2, 3),
                      translation_scale=(2, 2, 2), loss_weights={"quaternion": 10.0})
    return m.build_for_inputs()


def images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def test_outputs_have_the_documented_shapes_and_ranges(model):
    out = model.predict(images(), verbose=0)
    assert out["quaternion"].shape == (3, 4) and out["translation"].shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(out["quaternion"], axis=1), 1.0, atol=1e-5)
    assert np.all((out["outlier"] >= 0) & (out["outlier"] <= 1))
    features = model.backbone.predict(images(), verbose=0)
    assert features.ndim == 2 and features.shape[0] == 3


def test_keras_round_trip_keeps_config_and_predictions(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, PoseRegressor)
    assert loaded.get_config()["translation_mean"] == [1.0, 2.0, 3.0]
    assert loaded.loss_weights["quaternion"] == 10.0
    a, b = model.predict(images(), verbose=0), loaded.predict(images(), verbose=0)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    backbone_path = tmp_path / "backbone.keras"
    model.backbone.save(backbone_path)
    np.testing.assert_allclose(keras.models.load_model(backbone_path).predict(images(), verbose=0),
                               model.backbone.predict(images(), verbose=0), atol=1e-6)


def test_local_backbone_weights_file_is_loaded(model, tmp_path):
    path = tmp_path / "backbone.weights.h5"
    model.backbone.save_weights(path)
    again = build_backbone("convnext_micro_scratch", 32, weights=str(path))
    np.testing.assert_allclose(again.predict(images(), verbose=0),
                               model.backbone.predict(images(), verbose=0), atol=1e-6)


def test_missing_weights_and_unknown_backbone_are_clear_errors():
    with pytest.raises(FileNotFoundError, match="backbone weights file not found: /no/such.h5"):
        build_backbone("convnext_tiny", 32, weights="/no/such.h5")
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        build_backbone("resnet", 32)


def test_random_weights_are_announced(caplog):
    build_backbone("convnext_micro_scratch", 32, weights="")
    assert "RANDOM weights" in caplog.text


def test_keras_convnext_builds_offline_without_weights():
    backbone = build_backbone("convnext_tiny", 32, weights=None)
    assert backbone.output_shape == (None, 768)


def test_freezing_keeps_normalisation_frozen_and_unfreezes_the_top():
    backbone = build_backbone("convnext_tiny_scratch", 32, weights=None)
    n = len(backbone.layers)
    trainable = set_backbone_trainable(backbone, 0.8)
    top = backbone.layers[round(0.8 * n):]
    assert trainable == sum(not isinstance(layer, keras.layers.LayerNormalization) for layer in top)
    assert all(not layer.trainable for layer in backbone.layers[: round(0.8 * n)])
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.LayerNormalization)]
    assert norms and all(not layer.trainable for layer in norms)
    assert set_backbone_trainable(backbone, 1.0) == 0
    assert len(backbone.trainable_weights) == 0
    set_backbone_trainable(backbone, 0.0)
    dense = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)]
    assert all(layer.trainable for layer in dense)


@pytest.mark.slow
def test_one_step_on_two_replicas_equals_one_step_on_one_device():
    result = subprocess.run([sys.executable, str(ROOT / "tests/scripts/distributed_step.py"),
                             str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    for key, value in report["single"].items():
        assert report["mirrored"][key] == pytest.approx(value, rel=1e-5), key
    # The step really moved the weights, and both devices moved them the same way.
    assert report["max_weight_change"] > 1e-2
    assert report["max_weight_diff"] < 1e-5 * max(1.0, report["max_weight_change"])


def test_serialization_round_trip_keeps_config_and_outputs():
    model = PoseRegressor("convnext_micro_scratch", 32, head_units=8, dropout=0.1, l2=0.0,
                          loss_weights={"quaternion": 2.0, "translation": 0.5, "center": 0.25,
                                        "outlier": 4.0},
                          translation_mean=(1, 2, 3), translation_scale=(2, 3, 4))
    model.build_for_inputs()
    revived = run_serialization_test(model, not_saved=("backbone_weights",)).build_for_inputs()
    revived.set_weights(model.get_weights())
    a, b = model.infer(images()), revived.infer(images())
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
