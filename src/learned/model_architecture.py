"""The pose regressor: a ConvNeXt backbone and three heads, trained by its own train_step.

Inputs are RGB images (B, S, S, 3), float values in [0, 255]; every backbone normalises them
itself. Outputs (dict): ``quaternion`` (B, 4) unit x y z w (world-to-camera rotation),
``translation`` (B, 3) normalised by the translation scaler, ``outlier`` (B, 1) probability.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from src.learned.losses import HEADS, weighted_loss
from src.learned.metrics import OutlierAccuracy, QuaternionSimilarity, TranslationMAE

log = logging.getLogger(__name__)

KERAS_CONVNEXTS = {
    "convnext_tiny": "ConvNeXtTiny",
    "convnext_small": "ConvNeXtSmall",
    "convnext_base": "ConvNeXtBase",
    "convnext_large": "ConvNeXtLarge",
    "convnext_xlarge": "ConvNeXtXLarge",
}
SCRATCH_BACKBONES = {
    # name: (channels per stage, blocks per stage); ConvNeXt's shape at a fraction of the cost.
    "convnext_tiny_scratch": ((24, 48, 96, 192), (1, 1, 2, 1)),
    "convnext_micro_scratch": ((8, 16, 24, 32), (1, 1, 1, 1)),
}
BACKBONES = (*KERAS_CONVNEXTS, *SCRATCH_BACKBONES)


# --------------------------------------------------------------------------- backbones
def _scratch_convnext(name: str, image_size: int) -> keras.Model:
    """A small ConvNeXt (patchify stem, depthwise 7x7 + inverted-MLP blocks, LayerNorm)."""
    dims, depths = SCRATCH_BACKBONES[name]
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_prestem")(inputs)
    x = keras.layers.Conv2D(dims[0], 4, strides=4, name=f"{name}_stem_conv")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_stem_norm")(x)
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage > 0:
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_down{stage}_norm")(x)
            x = keras.layers.Conv2D(dim, 2, strides=2, name=f"{name}_down{stage}_conv")(x)
        for block in range(depth):
            prefix = f"{name}_stage{stage}_block{block}"
            shortcut = x
            x = keras.layers.DepthwiseConv2D(7, padding="same", name=f"{prefix}_dwconv")(x)
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_norm")(x)
            x = keras.layers.Dense(4 * dim, activation="gelu", name=f"{prefix}_pw1")(x)
            x = keras.layers.Dense(dim, name=f"{prefix}_pw2")(x)
            x = keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_head_norm")(x)
    return keras.Model(inputs, x, name=name)


def build_backbone(name: str, image_size: int, weights: str | None = "") -> keras.Model:
    """Backbone by name -> model mapping images (B, S, S, 3) to pooled features (B, D).

    ``weights``: a local weights file (ImageNet weights attached offline, e.g. the Keras
    ``convnext_large_notop.h5``). Empty means random initialisation, which is announced
    loudly: nothing is ever downloaded. None also means random, silently: the caller is
    about to load saved weights.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights file not found: {weights} (attach the "
                                f"file, or pass --backbone-weights '' for random weights)")
    if weights == "":
        log.warning("WARNING: backbone %s starts from RANDOM weights (no --backbone-weights "
                    "file given); poses and features will be far weaker than with ImageNet "
                    "weights", name)
    if name in SCRATCH_BACKBONES:
        backbone = _scratch_convnext(name, image_size)
        if weights:
            backbone.load_weights(weights)
        return backbone
    constructor = getattr(keras.applications, KERAS_CONVNEXTS[name])
    return constructor(include_top=False, weights=weights or None,
                       input_shape=(image_size, image_size, 3), pooling="avg")


def set_backbone_trainable(backbone: keras.Model, freeze_ratio: float) -> int:
    """Freeze the bottom ``freeze_ratio`` of the backbone's layers; train the rest.

    Normalisation layers stay frozen everywhere (their statistics come from pre-training).
    ``freeze_ratio`` 1.0 freezes everything, 0.0 trains everything but normalisation.
    Returns the number of trainable top-level layers.
    """
    backbone.trainable = True
    layers = backbone.layers
    first_trainable = int(round(len(layers) * freeze_ratio))
    for index, layer in enumerate(layers):
        layer.trainable = index >= first_trainable
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.BatchNormalization)):
            layer.trainable = False
    return sum(1 for layer in layers if layer.trainable)


# --------------------------------------------------------------------------- the model
@keras.saving.register_keras_serializable(package="imc")
class PoseRegressor(keras.Model):
    """ConvNeXt features -> quaternion, translation and outlier heads, with a multi-task loss.

    Args:
        backbone_name: one of ``BACKBONES``.
        image_size: square input size S.
        head_units, dropout, l2: hidden width, dropout rate and L2 weight decay of each head.
        loss_weights: weight per loss term (quaternion, translation, center, outlier).
        translation_mean, translation_scale: the translation scaler, so that losses and
            metrics work on translations in world units.
        backbone_weights: local weights file for the backbone ('' = random, announced; None =
            random, silently, for a model whose weights are loaded next); not saved in the
            config, since a saved model carries its weights.
    """

    def __init__(self, backbone_name: str = "convnext_tiny_scratch", image_size: int = 64,
                 head_units: int = 256, dropout: float = 0.3, l2: float = 1e-3,
                 loss_weights: dict | None = None, translation_mean=(0.0, 0.0, 0.0),
                 translation_scale=(1.0, 1.0, 1.0), backbone_weights: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.backbone_name = backbone_name
        self.image_size = int(image_size)
        self.head_units = int(head_units)
        self.dropout_rate = float(dropout)
        self.l2 = float(l2)
        self.loss_weights = {h: float((loss_weights or {}).get(h, 1.0)) for h in HEADS}
        self.translation_mean = [float(v) for v in translation_mean]
        self.translation_scale = [float(v) for v in translation_scale]
        self.backbone = build_backbone(backbone_name, self.image_size, backbone_weights)
        self.quaternion_head = self._head(4, "quaternion")
        self.translation_head = self._head(3, "translation")
        self.outlier_head = self._head(1, "outlier", activation="sigmoid")
        self.loss_trackers = {h: keras.metrics.Mean(name=f"{h}_loss") for h in HEADS}
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.pose_metrics = [QuaternionSimilarity(),
                             TranslationMAE(self.translation_mean, self.translation_scale),
                             OutlierAccuracy()]

    def _head(self, outputs: int, name: str, activation: str | None = None) -> keras.Sequential:
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        return keras.Sequential([
            keras.layers.Dense(self.head_units, activation="gelu", kernel_regularizer=regularizer,
                               name=f"{name}_hidden"),
            keras.layers.Dropout(self.dropout_rate, name=f"{name}_dropout"),
            # Outputs in float32 under mixed precision: losses need the range.
            keras.layers.Dense(outputs, activation=activation, kernel_regularizer=regularizer,
                               dtype="float32", name=f"{name}_out"),
        ], name=f"{name}_head")

    def call(self, images, training=False):
        return self._heads(self.backbone(images, training=training), training)

    def _heads(self, features, training):
        quaternion = self.quaternion_head(features, training=training)
        return {
            "quaternion": tf.math.l2_normalize(quaternion, axis=-1),
            "translation": self.translation_head(features, training=training),
            "outlier": self.outlier_head(features, training=training),
        }

    @tf.function(reduce_retracing=True)
    def infer(self, images):
        """Outputs and the backbone features (key ``features``) from one forward pass."""
        features = self.backbone(images, training=False)
        return {**self._heads(features, False), "features": features}

    # ----------------------------------------------------------------------- training
    @property
    def metrics(self):
        return [self.total_tracker, *self.loss_trackers.values(), *self.pose_metrics]

    def _pose_losses(self, y_true, y_pred):
        mean = tf.constant(self.translation_mean, tf.float32)
        scale = tf.constant(self.translation_scale, tf.float32)
        total, sums, counts = weighted_loss(y_true, y_pred, self.loss_weights, mean, scale)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.losses:  # weight decay: summed gradients over replicas must count it once
            total += tf.add_n(self.losses) / replicas
        return total, sums, counts, replicas

    def _update_metrics(self, total, sums, counts, replicas, y_true, y_pred) -> dict:
        # Each replica's total is its share of the global loss: times replicas, averaged
        # over replicas by the metric, it is the global loss.
        self.total_tracker.update_state(total * replicas)
        for head in HEADS:
            self.loss_trackers[head].update_state(
                tf.math.divide_no_nan(sums[head], counts[head]), sample_weight=counts[head])
        for metric in self.pose_metrics:
            metric.update_state(y_true, y_pred)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        images, y_true = data[0], data[1]
        with tf.GradientTape() as tape:
            y_pred = self(images, training=True)
            total, sums, counts, replicas = self._pose_losses(y_true, y_pred)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(total, sums, counts, replicas, y_true, y_pred)

    def test_step(self, data):
        images, y_true = data[0], data[1]
        y_pred = self(images, training=False)
        total, sums, counts, replicas = self._pose_losses(y_true, y_pred)
        return self._update_metrics(total, sums, counts, replicas, y_true, y_pred)

    # ----------------------------------------------------------------------- saving
    def get_config(self) -> dict:
        return {**super().get_config(), "backbone_name": self.backbone_name,
                "image_size": self.image_size, "head_units": self.head_units,
                "dropout": self.dropout_rate, "l2": self.l2, "loss_weights": self.loss_weights,
                "translation_mean": self.translation_mean,
                "translation_scale": self.translation_scale}

    def build_for_inputs(self) -> "PoseRegressor":
        """Create all weights by running one batch of zeros (before loading or saving)."""
        self(tf.zeros((1, self.image_size, self.image_size, 3)), training=False)
        return self
