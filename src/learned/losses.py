"""Per-example losses of the pose regressor and their reduction over the global batch.

Targets (see src.learned.dataset): ``quaternion`` (B, 4) unit x y z w, ``translation`` (B, 3)
normalised by the translation scaler, ``outlier`` (B, 1) in {0, 1}. Rows without a pose
(outliers, unposed images) carry NaN pose targets: they are masked out of the pose losses,
and the NaNs are replaced before any arithmetic so that no NaN reaches a gradient.

Reduction: each head's loss is the mean over the rows of the *global* batch where it is
defined. Every replica divides its local sum by the count all-reduced over replicas, so a
step on N replicas (whose gradients Keras sums) equals the same step on one device.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow_graphics.geometry.transformation import rotation_matrix_3d

HEADS = ("quaternion", "translation", "center", "outlier")


def pose_mask(y_true: dict) -> tf.Tensor:
    """(B,) float 1 where the row has a finite pose target."""
    finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(y_true["quaternion"]), axis=-1),
                            tf.reduce_all(tf.math.is_finite(y_true["translation"]), axis=-1))
    return tf.cast(finite, tf.float32)


def _clean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Zero the masked rows (and their NaNs) of a (B, k) target."""
    return tf.where(mask[:, None] > 0, x, tf.zeros_like(x))


def quaternion_angular_loss(q_true: tf.Tensor, q_pred: tf.Tensor) -> tf.Tensor:
    """1 - |q . q_hat| per row (B,): 0 for the same rotation, sign-blind (q and -q)."""
    q_pred = tf.math.l2_normalize(q_pred, axis=-1)
    return 1.0 - tf.abs(tf.reduce_sum(q_true * q_pred, axis=-1))


def denormalize(t_normalized: tf.Tensor, t_mean: tf.Tensor, t_scale: tf.Tensor) -> tf.Tensor:
    """Undo the StandardScaler: t = t_norm * scale + mean."""
    return t_normalized * t_scale + t_mean


def camera_centers_tf(quat_xyzw: tf.Tensor, t_cw: tf.Tensor) -> tf.Tensor:
    """C = -R(q)^T t in the graph (tensorflow-graphics rotation), (B, 4), (B, 3) -> (B, 3)."""
    R_cw = rotation_matrix_3d.from_quaternion(tf.math.l2_normalize(quat_xyzw, axis=-1))
    return -tf.linalg.matvec(R_cw, t_cw, transpose_a=True)


def per_example_losses(y_true: dict, y_pred: dict, t_mean: tf.Tensor,
                       t_scale: tf.Tensor) -> tuple[dict, dict]:
    """Per-row losses (B,) for each head and the matching 0/1 masks (B,), in float32."""
    y_pred = {k: tf.cast(v, tf.float32) for k, v in y_pred.items()}
    mask = pose_mask(y_true)
    q_true = _clean(tf.cast(y_true["quaternion"], tf.float32), mask)
    t_true = denormalize(_clean(tf.cast(y_true["translation"], tf.float32), mask), t_mean, t_scale)
    t_pred = denormalize(y_pred["translation"], t_mean, t_scale)
    outlier_true = tf.cast(y_true["outlier"], tf.float32)
    losses = {
        "quaternion": quaternion_angular_loss(q_true, y_pred["quaternion"]),
        "translation": tf.reduce_mean(tf.square(t_true - t_pred), axis=-1),
        "center": tf.reduce_mean(tf.square(
            camera_centers_tf(tf.where(mask[:, None] > 0, q_true, [[0.0, 0.0, 0.0, 1.0]]), t_true)
            - camera_centers_tf(y_pred["quaternion"], t_pred)), axis=-1),
        "outlier": tf.keras.losses.binary_crossentropy(outlier_true, y_pred["outlier"]),
    }
    masks = {"quaternion": mask, "translation": mask, "center": mask,
             "outlier": tf.ones_like(mask)}
    return losses, masks


def global_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """This replica's share of the mean of ``values`` over the masked rows of the global batch.

    Summed over replicas (as gradients are) it is exactly the global masked mean; with one
    device it is the plain masked mean. Zero when no row of the global batch is valid.
    """
    local_sum = tf.reduce_sum(values * mask)
    local_count = tf.reduce_sum(mask)
    ctx = tf.distribute.get_replica_context()
    global_count = (ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
                    if ctx is not None else local_count)
    return local_sum / tf.maximum(global_count, 1.0)


def weighted_loss(y_true: dict, y_pred: dict, weights: dict, t_mean: tf.Tensor,
                  t_scale: tf.Tensor) -> tuple[tf.Tensor, dict, dict]:
    """Total weighted loss (this replica's share), and per-head (local sum, local count)."""
    losses, masks = per_example_losses(y_true, y_pred, t_mean, t_scale)
    total = tf.add_n([weights[h] * global_mean(losses[h], masks[h]) for h in HEADS])
    sums = {h: tf.reduce_sum(losses[h] * masks[h]) for h in HEADS}
    counts = {h: tf.reduce_sum(masks[h]) for h in HEADS}
    return total, sums, counts
