"""tf.data input pipelines from the label tables (see src.learned.preprocessing) and image folders.

Images live at ``<image_root>/<dataset>/<image>`` (``image_root`` is ``<data>/train`` or
``<data>/test``). Every pipeline yields float32 RGB images (B, S, S, 3) with values in
[0, 255]: the Keras ConvNeXt backbones normalise internally. Training and evaluation
pipelines also yield the targets src.learned.losses expects::

    {"quaternion": (B, 4) unit x y z w,  "translation": (B, 3) scaler-normalised t_cw,
     "outlier": (B, 1) 0/1}

all float32, with NaN pose targets on rows without a pose (outliers, unposed images); the
loss masks them.

Stages: check the files (header bytes only) -> decode (PNG/JPEG, any channel count -> RGB)
-> resize to S x S -> cache (uint8) -> shuffle -> colour augmentation -> batch -> prefetch.
Shuffle order and augmentation depend only on ``seed`` (and the epoch): a fresh build with
the same seed replays the same epochs.

Distribution: pass the GLOBAL batch size (per-replica size x replicas);
``strategy.experimental_distribute_dataset`` or Keras ``fit`` splits each batch across the
replicas. ``drop_remainder=True`` gives the static batch shape TPUs need.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.preprocessing import StandardScaler

from src.submission import QUAT_COLUMNS, TRANSLATION_COLUMNS
from src.data_io import DataError

AUTOTUNE = tf.data.AUTOTUNE
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
REQUIRED_COLUMNS = ["dataset", "image", "is_outlier", *QUAT_COLUMNS, *TRANSLATION_COLUMNS]

# Colour jitter, in units of the [0, 1] image; photometric only, because any geometric
# change (flip, crop, rotation) would change the camera pose the targets describe.
MAX_BRIGHTNESS_DELTA = 0.15
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
MAX_HUE_DELTA = 0.04


# --------------------------------------------------------------------------- file checks
def image_paths(labels: pd.DataFrame, image_root: str | os.PathLike) -> list[Path]:
    """``<image_root>/<dataset>/<image>`` of each labels row, in row order."""
    root = Path(image_root)
    return [root / str(dataset) / str(image)
            for dataset, image in zip(labels["dataset"], labels["image"])]


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable PNG/JPEG file (None when its header looks right)."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a regular file"
    with open(path, "rb") as handle:
        head = handle.read(len(PNG_SIGNATURE))
    if not head:
        return "is empty"
    if not (head.startswith(PNG_SIGNATURE) or head.startswith(JPEG_SIGNATURE)):
        return f"is not a PNG or JPEG file (starts with {head[:4]!r})"
    return None


def check_image_files(paths: list[Path], row_names: list[str]) -> None:
    """Raise DataError unless every file exists, is non-empty and starts like a PNG or JPEG.

    Reads only the first 8 bytes of each file, so it is fast even for thousands of images.
    ``row_names[i]`` says where ``paths[i]`` came from (a labels row, a list position);
    the message names the first bad file, its row and how many files are bad. A file with a
    good header but a corrupt body still fails later, when tf.data decodes it.
    """
    problems = [(path, name, problem) for path, name in zip(paths, row_names)
                if (problem := _file_problem(Path(path))) is not None]
    if problems:
        path, name, problem = problems[0]
        raise DataError(f"{len(problems)} of {len(paths)} image file(s) are missing or not "
                        f"PNG/JPEG; first: {path} ({name}) {problem}")


def undecodable_images(paths: list[str | os.PathLike]) -> dict[int, str]:
    """Index -> why, for each of ``paths`` that the input pipeline could not decode: the
    header check of :func:`check_image_files`, then a full decode with the same TensorFlow
    decoder the datasets use (a truncated JPEG passes the first and fails the second, and
    inside tf.data it would stop the whole run without naming the file)."""
    problems = {}
    for index, path in enumerate(paths):
        problem = _file_problem(Path(path))
        if problem is None:
            try:
                tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                                   expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
                problem = f"cannot be decoded ({error.message.strip().splitlines()[0]})"
        if problem is not None:
            problems[index] = problem
    return problems


def _check_labels(labels: pd.DataFrame) -> None:
    """Raise DataError for an empty table or one lacking the columns the targets need."""
    if len(labels) == 0:
        raise DataError("labels: no images to build a dataset from (the table is empty)")
    missing = [c for c in REQUIRED_COLUMNS if c not in labels.columns]
    if missing:
        raise DataError(f"labels: missing column(s) {missing} (expected a table parsed by "
                        f"src.learned.preprocessing.parse_labels); found {list(labels.columns)}")


def _labelled_paths(labels: pd.DataFrame, image_root: str | os.PathLike) -> list[str]:
    """Checked image paths of the labels rows, as strings for tf.data."""
    _check_labels(labels)
    paths = image_paths(labels, image_root)
    row_names = [f"labels row {index}: {dataset}/{image}" for index, dataset, image
                 in zip(labels.index, labels["dataset"], labels["image"])]
    check_image_files(paths, row_names)
    return [str(p) for p in paths]


# --------------------------------------------------------------------------- targets
def make_targets(labels: pd.DataFrame, scaler: StandardScaler) -> dict[str, np.ndarray]:
    """The loss targets of each row as float32 arrays (see module doc), in row order.

    Pose targets are NaN unless the row is a posed inlier: outliers have no pose to learn,
    and the scaler was fitted on posed inliers only.
    """
    _check_labels(labels)
    quats = labels[QUAT_COLUMNS].to_numpy(np.float64)
    t_cw = labels[TRANSLATION_COLUMNS].to_numpy(np.float64)
    is_outlier = labels["is_outlier"].to_numpy(bool)
    posed = np.isfinite(quats).all(axis=1) & np.isfinite(t_cw).all(axis=1) & ~is_outlier
    if "has_pose" in labels.columns:
        posed &= labels["has_pose"].to_numpy(bool)
    quaternion = np.full((len(labels), 4), np.nan)
    translation = np.full((len(labels), 3), np.nan)
    quaternion[posed] = quats[posed]
    if posed.any():
        translation[posed] = scaler.transform(t_cw[posed])
    return {"quaternion": quaternion.astype(np.float32),
            "translation": translation.astype(np.float32),
            "outlier": is_outlier.astype(np.float32)[:, None]}


# --------------------------------------------------------------------------- image ops
def decode_and_resize(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Image file path (scalar string) -> uint8 RGB (S, S, 3), bilinear with antialiasing.

    Grayscale and RGBA files become RGB. The result is rounded to uint8 because that is
    what the cache stores: 4x less memory than float32, and the source pixels were uint8.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def to_model_input(image: tf.Tensor) -> tf.Tensor:
    """uint8 (S, S, 3) -> float32 (S, S, 3) in [0, 255], the backbones' input range."""
    return tf.cast(image, tf.float32)


def augment_colours(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue of one uint8 image (S, S, 3).

    ``seed`` is a stateless seed (2,) int64: the same seed gives the same result on any
    device and build. Returns float32 (S, S, 3) in [0, 255].
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    # The tf.image colour ops assume [0, 1] floats (hue and saturation go through HSV).
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, MAX_BRIGHTNESS_DELTA, seeds[0])
    x = tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seeds[1])
    # Clip before the HSV ops: out-of-range values give wrapped, meaningless hues.
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.image.stateless_random_saturation(x, *SATURATION_RANGE, seeds[2])
    x = tf.image.stateless_random_hue(x, MAX_HUE_DELTA, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


# --------------------------------------------------------------------------- pipelines
def _check_sizes(image_size: int, global_batch_size: int) -> None:
    if int(image_size) < 1 or int(global_batch_size) < 1:
        raise DataError(f"image_size and global_batch_size must be positive integers, got "
                        f"{image_size} and {global_batch_size}")


def _cache_prefix(prefix: str, paths: list[str], image_size: int) -> str:
    """``prefix`` plus a fingerprint of the image list and size.

    tf.data reuses any finished cache at a prefix without checking what it holds, so a
    cache written for other images or another size would silently feed the wrong pixels.
    """
    digest = hashlib.sha1(f"{image_size}\n".encode() + "\n".join(paths).encode()).hexdigest()
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}_{image_size}px_{digest[:12]}"


def _decoded_images(paths: list[str], image_size: int, targets: dict | None,
                    cache: bool | str) -> tf.data.Dataset:
    """Dataset of (index, uint8 image (S, S, 3), targets or nothing), decoded, resized and
    cached; ``index`` is the position in ``paths`` (int64), used to key augmentation."""
    columns = (np.arange(len(paths), dtype=np.int64), list(paths))
    if targets is not None:
        columns += (targets,)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.map(lambda index, path, *rest: (index, decode_and_resize(path, image_size), *rest),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache is True:
        ds = ds.cache()
    elif isinstance(cache, str) and cache:
        ds = ds.cache(_cache_prefix(cache, paths, image_size))
    return ds


def _finish(ds: tf.data.Dataset, global_batch_size: int,
            drop_remainder: bool) -> tf.data.Dataset:
    """Batch, prefetch and set options shared by every pipeline."""
    ds = ds.batch(global_batch_size, drop_remainder=drop_remainder,
                  num_parallel_calls=AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    # The elements come from a Python list, not files: sharding by file would fail on
    # multi-worker setups, so shard by element.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options).prefetch(AUTOTUNE)


def training_dataset(labels: pd.DataFrame, image_root: str | os.PathLike,
                     scaler: StandardScaler, image_size: int, global_batch_size: int,
                     seed: int, augment: bool = True, shuffle: bool = True,
                     cache: bool | str = True, drop_remainder: bool = False
                     ) -> tf.data.Dataset:
    """Training pipeline of ``(images, targets)`` batches (see module doc for shapes).

    Args:
        labels: parsed labels rows (src.learned.preprocessing.parse_labels layout).
        image_root: folder holding ``<dataset>/<image>``.
        scaler: translation StandardScaler (src.learned.preprocessing.fit_translation_scaler).
        image_size: S, the square side in pixels.
        global_batch_size: images per step over all replicas.
        seed: fixes the shuffle order of every epoch and the colour augmentation.
        augment: random brightness / contrast / saturation / hue per image and epoch.
        shuffle: reshuffle all rows every epoch (buffer = the whole table).
        cache: True caches the decoded, resized images in memory, a string caches them in
            files at that prefix (plus a fingerprint), False decodes every epoch.
        drop_remainder: drop the last partial batch, giving a static batch dimension.

    Raises DataError for an empty table, missing columns, or a missing or non-PNG/JPEG file.
    """
    _check_sizes(image_size, global_batch_size)
    paths = _labelled_paths(labels, image_root)
    ds = _decoded_images(paths, image_size, make_targets(labels, scaler), cache)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if augment:
        # One fresh random number per element and epoch, replayed by any build with this seed.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            lambda element, draw: (augment_colours(element[1], tf.stack([draw, element[0]])),
                                   element[2]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda index, image, targets: (to_model_input(image), targets),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    return _finish(ds, global_batch_size, drop_remainder)


def evaluation_dataset(labels: pd.DataFrame, image_root: str | os.PathLike,
                       scaler: StandardScaler, image_size: int, global_batch_size: int,
                       cache: bool | str = True) -> tf.data.Dataset:
    """``(images, targets)`` batches in labels row order, without augmentation.

    Same arguments, targets and errors as :func:`training_dataset`; the last batch may be
    partial.
    """
    _check_sizes(image_size, global_batch_size)
    paths = _labelled_paths(labels, image_root)
    ds = _decoded_images(paths, image_size, make_targets(labels, scaler), cache)
    ds = ds.map(lambda index, image, targets: (to_model_input(image), targets),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return _finish(ds, global_batch_size, drop_remainder=False)


def image_dataset(paths: list[str | os.PathLike], image_size: int,
                  global_batch_size: int) -> tf.data.Dataset:
    """Batches of float32 images (B, S, S, 3) in [0, 255], in the order of ``paths``.

    For inference on test images: no targets, no cache (each image is read once).
    Raises DataError for an empty list or a missing or non-PNG/JPEG file.
    """
    _check_sizes(image_size, global_batch_size)
    if len(paths) == 0:
        raise DataError("image_dataset: no images given (the path list is empty)")
    paths = [Path(p) for p in paths]
    check_image_files(paths, [f"path list item {i}" for i in range(len(paths))])
    ds = _decoded_images([str(p) for p in paths], image_size, targets=None, cache=False)
    ds = ds.map(lambda index, image: to_model_input(image),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return _finish(ds, global_batch_size, drop_remainder=False)
