"""Metrics of the pose regressor, computed where they mean something.

Each metric keeps a (sum, count) pair; Keras sums metric variables over replicas, so the
value is exact over the global batch under any ``tf.distribute`` strategy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from src.learned.losses import denormalize, pose_mask


class _MaskedMean(keras.metrics.Metric):
    """Mean of a per-row value over the rows a mask selects."""

    def __init__(self, name: str, dtype: str = "float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _values_and_mask(self, y_true: dict, y_pred: dict) -> tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError

    def update_state(self, y_true: dict, y_pred: dict, sample_weight=None) -> None:
        values, mask = self._values_and_mask(y_true, y_pred)
        values = tf.where(mask > 0, values, tf.zeros_like(values))
        self.total.assign_add(tf.reduce_sum(values * mask))
        self.count.assign_add(tf.reduce_sum(mask))

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(self.total, self.count)


@keras.saving.register_keras_serializable(package="imc")
class QuaternionSimilarity(_MaskedMean):
    """Mean |q . q_hat| over posed rows: 1 = exact rotation, cos(angle / 2)."""

    def __init__(self, name: str = "quat_similarity", **kwargs):
        super().__init__(name=name, **kwargs)

    def _values_and_mask(self, y_true, y_pred):
        mask = pose_mask(y_true)
        q_true = tf.where(mask[:, None] > 0, tf.cast(y_true["quaternion"], tf.float32), 0.0)
        q_pred = tf.math.l2_normalize(tf.cast(y_pred["quaternion"], tf.float32), axis=-1)
        return tf.abs(tf.reduce_sum(q_true * q_pred, axis=-1)), mask


@keras.saving.register_keras_serializable(package="imc")
class TranslationMAE(_MaskedMean):
    """Mean absolute error of the de-normalised translation (world units) over posed rows."""

    def __init__(self, translation_mean=(0.0, 0.0, 0.0), translation_scale=(1.0, 1.0, 1.0),
                 name: str = "translation_mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.translation_mean = [float(v) for v in translation_mean]
        self.translation_scale = [float(v) for v in translation_scale]

    def _values_and_mask(self, y_true, y_pred):
        mask = pose_mask(y_true)
        mean = tf.constant(self.translation_mean, tf.float32)
        scale = tf.constant(self.translation_scale, tf.float32)
        t_true = tf.where(mask[:, None] > 0, tf.cast(y_true["translation"], tf.float32), 0.0)
        error = tf.abs(denormalize(t_true, mean, scale)
                       - denormalize(tf.cast(y_pred["translation"], tf.float32), mean, scale))
        return tf.reduce_mean(error, axis=-1), mask

    def get_config(self) -> dict:
        return {**super().get_config(), "translation_mean": self.translation_mean,
                "translation_scale": self.translation_scale}


@keras.saving.register_keras_serializable(package="imc")
class OutlierAccuracy(_MaskedMean):
    """Share of rows whose outlier probability falls on the right side of 0.5."""

    def __init__(self, name: str = "outlier_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def _values_and_mask(self, y_true, y_pred):
        truth = tf.reshape(tf.cast(y_true["outlier"], tf.float32), [-1])
        predicted = tf.cast(tf.reshape(tf.cast(y_pred["outlier"], tf.float32), [-1]) > 0.5,
                            tf.float32)
        return tf.cast(tf.equal(truth, predicted), tf.float32), tf.ones_like(truth)
