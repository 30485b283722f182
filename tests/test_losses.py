"""Losses and metrics against NumPy/SciPy references; NaN rows never poison anything."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from src.learned import losses
from src.geometry import camera_centers
from src.learned.metrics import OutlierAccuracy, QuaternionSimilarity, TranslationMAE
from tests.serialization import run_serialization_test

MEAN = np.array([1.0, -2.0, 0.5], np.float32)
SCALE = np.array([2.0, 0.5, 3.0], np.float32)


def batch(n=6, seed=0, outliers=(1, 4)):
    rng = np.random.default_rng(seed)
    q = Rotation.random(n, random_state=seed).as_quat().astype(np.float32)
    t = rng.normal(size=(n, 3)).astype(np.float32)
    o = np.zeros((n, 1), np.float32)
    for i in outliers:
        q[i], t[i], o[i] = np.nan, np.nan, 1.0
    return {"quaternion": q, "translation": t, "outlier": o}


def prediction(n=6, seed=1):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    return {"quaternion": q / np.linalg.norm(q, axis=1, keepdims=True),
            "translation": rng.normal(size=(n, 3)).astype(np.float32),
            "outlier": rng.uniform(0.05, 0.95, size=(n, 1)).astype(np.float32)}


def test_quaternion_loss_is_zero_for_same_rotation_and_sign_blind():
    q = Rotation.random(5, random_state=3).as_quat().astype(np.float32)
    np.testing.assert_allclose(losses.quaternion_angular_loss(q, q), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.quaternion_angular_loss(q, -q), 0.0, atol=1e-6)
    other = Rotation.random(5, random_state=4).as_quat().astype(np.float32)
    expected = 1 - np.abs(np.sum(q * other, axis=1))
    np.testing.assert_allclose(losses.quaternion_angular_loss(q, other), expected, atol=1e-6)


def test_graph_camera_centres_match_numpy_geometry():
    q = Rotation.random(7, random_state=5).as_quat()
    t = np.random.default_rng(0).normal(size=(7, 3))
    expected = camera_centers(Rotation.from_quat(q).as_matrix(), t)
    got = losses.camera_centers_tf(tf.constant(q, tf.float32), tf.constant(t, tf.float32))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_per_example_losses_against_numpy_and_masks():
    y_true, y_pred = batch(), prediction()
    per_row, masks = losses.per_example_losses(y_true, y_pred, MEAN, SCALE)
    posed = np.isfinite(y_true["translation"]).all(axis=1)
    np.testing.assert_array_equal(masks["quaternion"].numpy(), posed.astype(np.float32))
    np.testing.assert_array_equal(masks["outlier"].numpy(), np.ones(6))
    t_true = y_true["translation"] * SCALE + MEAN
    t_pred = y_pred["translation"] * SCALE + MEAN
    expected_t = np.mean((t_true - t_pred) ** 2, axis=1)
    np.testing.assert_allclose(per_row["translation"].numpy()[posed], expected_t[posed], rtol=1e-5)
    R_true = Rotation.from_quat(y_true["quaternion"][posed]).as_matrix()
    R_pred = Rotation.from_quat(y_pred["quaternion"][posed]).as_matrix()
    expected_c = np.mean((camera_centers(R_true, t_true[posed])
                          - camera_centers(R_pred, t_pred[posed])) ** 2, axis=1)
    np.testing.assert_allclose(per_row["center"].numpy()[posed], expected_c, rtol=1e-4)
    p = y_pred["outlier"][:, 0]
    y = y_true["outlier"][:, 0]
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(per_row["outlier"].numpy(), bce, rtol=1e-4)
    for head in losses.HEADS:
        assert np.all(np.isfinite(per_row[head].numpy()))


def test_nan_targets_give_finite_gradients():
    y_true = batch()
    logits = tf.Variable(prediction()["quaternion"])
    trans = tf.Variable(prediction()["translation"])
    with tf.GradientTape() as tape:
        y_pred = {"quaternion": tf.math.l2_normalize(logits, axis=-1), "translation": trans,
                  "outlier": tf.fill((6, 1), 0.3)}
        total, _, _ = losses.weighted_loss(y_true, y_pred, dict.fromkeys(losses.HEADS, 1.0),
                                           MEAN, SCALE)
    grads = tape.gradient(total, [logits, trans])
    assert np.isfinite(total.numpy())
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    # Outlier rows get no pose gradient at all.
    np.testing.assert_array_equal(grads[1].numpy()[[1, 4]], 0.0)


def test_global_mean_is_the_masked_mean_on_one_device():
    values = tf.constant([1.0, 2.0, 3.0, 4.0])
    mask = tf.constant([1.0, 0.0, 1.0, 0.0])
    assert losses.global_mean(values, mask).numpy() == pytest.approx(2.0)
    assert losses.global_mean(values, tf.zeros(4)).numpy() == 0.0


def test_all_outlier_batch_has_zero_pose_loss():
    y_true = batch(outliers=range(6))
    total, sums, counts = losses.weighted_loss(
        y_true, prediction(), {"quaternion": 1.0, "translation": 1.0, "center": 1.0, "outlier": 0.0},
        MEAN, SCALE)
    assert total.numpy() == 0.0 and counts["quaternion"].numpy() == 0.0


def test_metrics_against_numpy():
    y_true, y_pred = batch(), prediction()
    posed = np.isfinite(y_true["translation"]).all(axis=1)
    sim = QuaternionSimilarity()
    sim.update_state(y_true, y_pred)
    expected = np.mean(np.abs(np.sum(y_true["quaternion"][posed] * y_pred["quaternion"][posed], 1)))
    assert sim.result().numpy() == pytest.approx(expected, rel=1e-5)
    mae = TranslationMAE(MEAN, SCALE)
    mae.update_state(y_true, y_pred)
    err = np.abs((y_true["translation"] - y_pred["translation"]) * SCALE)[posed].mean()
    assert mae.result().numpy() == pytest.approx(err, rel=1e-5)
    acc = OutlierAccuracy()
    acc.update_state(y_true, y_pred)
    right = (y_pred["outlier"][:, 0] > 0.5) == (y_true["outlier"][:, 0] > 0.5)
    assert acc.result().numpy() == pytest.approx(right.mean())
    assert TranslationMAE.from_config(mae.get_config()).translation_scale == list(SCALE)


@pytest.mark.parametrize("metric", [QuaternionSimilarity(), OutlierAccuracy(),
                                    QuaternionSimilarity(name="val_quat", dtype="float64"),
                                    TranslationMAE(MEAN, SCALE, name="t_mae")],
                         ids=lambda m: m.name)
def test_metric_serialization_round_trip_keeps_config_and_values(metric):
    revived = run_serialization_test(metric)
    y_true, y_pred = batch(), prediction()
    for m in (metric, revived):
        m.reset_state()
        m.update_state(y_true, y_pred)
    assert revived.result().numpy() == metric.result().numpy()
