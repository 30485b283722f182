"""One training step on 1 device and on 2 logical CPU replicas; prints a JSON comparison.

Run as a script (logical devices must be configured before TensorFlow starts).
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

sys.path.insert(0, sys.argv[1])
from src.learned.model_architecture import PoseRegressor  # noqa: E402

WEIGHTS = {"quaternion": 10.0, "translation": 0.01, "center": 0.001, "outlier": 10.0}


def make_model():
    model = PoseRegressor("convnext_micro_scratch", 32, head_units=8, dropout=0.0, l2=1e-3,
                          loss_weights=WEIGHTS, translation_mean=(0.5, -1, 2),
                          translation_scale=(2, 1, 0.5))
    model.build_for_inputs()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    return model


rng = np.random.default_rng(0)
n = 8
images = rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32")
q = rng.normal(size=(n, 4))
q /= np.linalg.norm(q, axis=1, keepdims=True)
t = rng.normal(size=(n, 3))
outlier = np.zeros((n, 1), "float32")
# Uneven masks across the two halves of the batch: replica 0 gets 3 outliers, replica 1 none.
for i in (0, 1, 2):
    q[i], t[i], outlier[i] = np.nan, np.nan, 1.0
targets = {"quaternion": q.astype("float32"), "translation": t.astype("float32"), "outlier": outlier}
dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(n)

single = make_model()
initial = single.get_weights()
history_single = single.fit(dataset, epochs=1, verbose=0).history

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = make_model()
    mirrored.set_weights(initial)
history_mirrored = mirrored.fit(dataset, epochs=1, verbose=0).history

diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights()))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), initial))
print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "single": {k: float(v[0]) for k, v in history_single.items()},
                  "mirrored": {k: float(v[0]) for k, v in history_mirrored.items()},
                  "max_weight_diff": diff, "max_weight_change": moved}))
