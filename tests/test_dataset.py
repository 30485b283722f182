"""tf.data pipelines: shapes, targets, image formats, order, seeding, augmentation, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src.learned import dataset as ds
from src.learned import preprocessing as pp
from src.data_io import DataError, format_numbers

S = 24  # model input side in the tests

# (dataset, scene, image, format, RGB colour); each image is one distinct constant colour, so
# its mean colour identifies it after resizing, batching and shuffling.
IMAGES = [
    ("ds_a", "s1", "a0.png", "rgb", (250, 10, 10)),
    ("ds_a", "s1", "a1.png", "gray", (40, 40, 40)),
    ("ds_a", "s1", "a2.png", "rgba", (10, 250, 10)),
    ("ds_a", "s1", "a3.jpg", "jpeg", (10, 10, 250)),
    ("ds_a", "s2", "a4.png", "rgb", (200, 200, 20)),
    ("ds_a", "s2", "a5.png", "rgb", (20, 200, 200)),
    ("ds_a", "s2", "a6.png", "gray", (160, 160, 160)),
    ("ds_a", "s2", "a7.png", "rgb", (120, 60, 200)),  # given a NaN pose: unposed inlier
    ("ds_a", "outliers", "a8.png", "rgb", (90, 160, 40)),
    ("ds_b", "s3", "b0.jpeg", "jpeg", (200, 120, 60)),
    ("ds_b", "s3", "b1.png", "rgba", (60, 100, 140)),
    ("ds_b", "outliers", "b2.png", "rgb", (230, 180, 230)),
]
UNPOSED = "a7.png"


def write_constant_image(path: Path, kind: str, rgb: tuple, height: int, width: int) -> None:
    """A constant-colour image file of the given kind, written by OpenCV (BGR order)."""
    bgr = np.array(rgb[::-1], np.uint8)
    if kind == "gray":
        pixels = np.full((height, width), rgb[0], np.uint8)
    elif kind == "rgba":
        pixels = np.concatenate([np.broadcast_to(bgr, (height, width, 3)),
                                 np.full((height, width, 1), 128, np.uint8)], axis=2)
    else:
        pixels = np.broadcast_to(bgr, (height, width, 3)).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(image_root, parsed labels, scaler) for the IMAGES above, sizes 16-40 px."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    rows = []
    for i, (dataset, scene, image, kind, rgb) in enumerate(IMAGES):
        write_constant_image(root / dataset / image, kind, rgb, 16 + 2 * i, 40 - i)
        if scene == "outliers" or image == UNPOSED:
            rot, trans = "nan;" * 8 + "nan", "nan;nan;nan"
        else:
            rot = format_numbers(Rotation.random(random_state=i).as_matrix())
            trans = format_numbers(rng.normal(0, 5, 3))
        rows.append([dataset, scene, image, rot, trans])
    frame = pd.DataFrame(rows, columns=["dataset", "scene", "image", "rotation_matrix",
                                        "translation_vector"])
    labels = pp.parse_labels(frame)
    return root, labels, pp.fit_translation_scaler(labels)


def expected_colours() -> np.ndarray:
    return np.array([rgb for *_, rgb in IMAGES], np.float64)


def collect(dataset) -> tuple[np.ndarray, dict]:
    """All (images, targets) batches of one pass, concatenated on the batch axis."""
    images, targets = [], []
    for batch in dataset:
        if isinstance(batch, tuple):
            images.append(batch[0].numpy())
            targets.append({k: v.numpy() for k, v in batch[1].items()})
        else:
            images.append(batch.numpy())
    joined = ({k: np.concatenate([t[k] for t in targets]) for k in targets[0]}
              if targets else {})
    return np.concatenate(images), joined


def identify(images: np.ndarray) -> list[int]:
    """Index in IMAGES of each image, by nearest mean colour."""
    means = images.mean(axis=(1, 2))
    return [int(np.argmin(np.linalg.norm(expected_colours() - m, axis=1))) for m in means]


# --------------------------------------------------------------------------- shapes, targets
def test_training_batches_have_the_documented_shapes_dtypes_and_range(data):
    root, labels, scaler = data
    train = ds.training_dataset(labels, root, scaler, S, global_batch_size=5, seed=1)
    sizes = []
    for images, targets in train:
        batch = images.shape[0]
        sizes.append(batch)
        assert images.shape == (batch, S, S, 3) and images.dtype == np.float32
        assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 255.0
        assert set(targets) == {"quaternion", "translation", "outlier"}
        assert targets["quaternion"].shape == (batch, 4)
        assert targets["translation"].shape == (batch, 3)
        assert targets["outlier"].shape == (batch, 1)
        assert all(t.dtype == np.float32 for t in targets.values())
    assert sizes == [5, 5, 2]


def test_targets_match_the_labels_table_and_the_scaler(data):
    root, labels, scaler = data
    _, targets = collect(ds.evaluation_dataset(labels, root, scaler, S, global_batch_size=4))
    posed = labels["has_pose"].to_numpy() & ~labels["is_outlier"].to_numpy()
    t_cw = labels[pp.TRANSLATION_COLUMNS].to_numpy()
    np.testing.assert_allclose(targets["quaternion"][posed],
                               labels.loc[posed, pp.QUAT_COLUMNS].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(targets["translation"][posed], scaler.transform(t_cw[posed]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaler.inverse_transform(targets["translation"][posed]),
                               t_cw[posed], rtol=1e-5, atol=1e-4)
    assert np.isnan(targets["quaternion"][~posed]).all()
    assert np.isnan(targets["translation"][~posed]).all()
    np.testing.assert_array_equal(targets["outlier"][:, 0],
                                  labels["is_outlier"].to_numpy(np.float32))
    unposed = labels["image"].to_numpy() == UNPOSED
    assert targets["outlier"][unposed, 0] == 0.0 and not posed[unposed].any()


def test_outlier_rows_get_no_pose_even_when_the_table_has_one(data):
    _, labels, scaler = data
    labels = labels.copy()
    outlier = labels["is_outlier"].to_numpy()
    labels.loc[outlier, pp.QUAT_COLUMNS] = [0.0, 0.0, 0.0, 1.0]
    labels.loc[outlier, pp.TRANSLATION_COLUMNS] = [1.0, 2.0, 3.0]
    targets = ds.make_targets(labels, scaler)
    assert np.isnan(targets["quaternion"][outlier]).all()
    assert np.isnan(targets["translation"][outlier]).all()
    assert (targets["outlier"][outlier] == 1.0).all()


# --------------------------------------------------------------------------- pixels, order
def test_every_format_comes_out_rgb_with_its_colour(data):
    root, labels, _ = data
    images, _ = collect(ds.image_dataset(ds.image_paths(labels, root), S, global_batch_size=5))
    assert images.shape == (len(IMAGES), S, S, 3) and images.dtype == np.float32
    # JPEG may shift a constant colour by a few levels; PNG must be exact.
    np.testing.assert_allclose(images.mean(axis=(1, 2)), expected_colours(), atol=4)


def test_evaluation_keeps_row_order_and_exact_pixels(data):
    root, labels, scaler = data
    images, _ = collect(ds.evaluation_dataset(labels, root, scaler, S, global_batch_size=5))
    assert identify(images) == list(range(len(IMAGES)))
    for image, (*_, kind, rgb) in zip(images, IMAGES):
        if kind != "jpeg":
            np.testing.assert_array_equal(image, np.broadcast_to(np.float32(rgb), (S, S, 3)))


def test_evaluation_follows_a_reordered_table(data):
    root, labels, scaler = data
    reordered = labels.iloc[::-1]
    images, _ = collect(ds.evaluation_dataset(reordered, root, scaler, S, global_batch_size=3,
                                              cache=False))
    assert identify(images) == list(range(len(IMAGES)))[::-1]


def training_order(data, seed, epochs=1) -> list[list[int]]:
    root, labels, scaler = data
    train = ds.training_dataset(labels, root, scaler, S, global_batch_size=4, seed=seed,
                                augment=False)
    return [identify(collect(train)[0]) for _ in range(epochs)]


def test_shuffle_is_seeded_and_reshuffles_every_epoch(data):
    first = training_order(data, seed=7, epochs=2)
    assert sorted(first[0]) == list(range(len(IMAGES)))
    assert first[0] != first[1], "two epochs gave the same order"
    assert training_order(data, seed=7, epochs=2) == first, "same seed, other order"
    assert training_order(data, seed=8)[0] != first[0], "different seeds, same order"


def test_no_shuffle_keeps_row_order(data):
    root, labels, scaler = data
    train = ds.training_dataset(labels, root, scaler, S, global_batch_size=4, seed=0,
                                augment=False, shuffle=False)
    assert identify(collect(train)[0]) == list(range(len(IMAGES)))


# --------------------------------------------------------------------------- augmentation
def augmented_epochs(data, seed: int, epochs: int) -> list[np.ndarray]:
    root, labels, scaler = data
    train = ds.training_dataset(labels, root, scaler, S, global_batch_size=5, seed=seed,
                                shuffle=False)
    return [collect(train)[0] for _ in range(epochs)]


def test_augmentation_changes_colours_deterministically_per_seed_and_epoch(data):
    root, labels, scaler = data
    plain, _ = collect(ds.evaluation_dataset(labels, root, scaler, S, global_batch_size=5))
    first = augmented_epochs(data, seed=3, epochs=2)
    for images in first:
        assert images.shape == plain.shape
        assert 0.0 <= images.min() and images.max() <= 255.0
        changed = np.abs(images - plain).max(axis=(1, 2, 3)) > 1.0
        assert changed.mean() > 0.5, "augmentation left most images unchanged"
    assert not np.allclose(first[0], first[1]), "both epochs got the same augmentation"
    again = augmented_epochs(data, seed=3, epochs=2)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    assert not np.allclose(augmented_epochs(data, seed=4, epochs=1)[0], first[0])


def test_augmentation_is_photometric_only():
    """A left/right gradient keeps its direction: no flips or crops move the content."""
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
    image = np.round(ramp).astype(np.uint8)
    for key in range(5):
        out = ds.augment_colours(image, np.array([key, 0], np.int64)).numpy()
        assert out.shape == image.shape
        assert out[:, :4].mean() < out[:, -4:].mean()


# --------------------------------------------------------------------------- errors
def test_missing_and_corrupt_files_are_named(data, tmp_path):
    _, labels, scaler = data
    root = tmp_path / "train"
    for dataset, _, image, kind, rgb in IMAGES:
        write_constant_image(root / dataset / image, kind, rgb, 16, 16)
    (root / "ds_a" / "a2.png").unlink()
    (root / "ds_a" / "a5.png").write_text("not an image")
    (root / "ds_b" / "b0.jpeg").write_bytes(np.random.default_rng(0).bytes(64))
    (root / "ds_b" / "b1.png").write_bytes(b"")
    with pytest.raises(DataError) as error:
        ds.training_dataset(labels, root, scaler, S, global_batch_size=4, seed=0)
    message = str(error.value)
    assert str(root / "ds_a" / "a2.png") in message and "ds_a/a2.png" in message
    assert "does not exist" in message and "4 of 12" in message
    for bad, reason in (("ds_a/a5.png", "not a PNG or JPEG"), ("ds_b/b0.jpeg", "not a PNG"),
                        ("ds_b/b1.png", "is empty")):
        row = labels[(labels["dataset"] + "/" + labels["image"]) == bad]
        with pytest.raises(DataError, match=reason) as error:
            ds.evaluation_dataset(row, root, scaler, S, global_batch_size=4)
        assert str(root / bad) in str(error.value) and bad in str(error.value)
    with pytest.raises(DataError, match="1 of 1.*path list item 0"):
        ds.image_dataset([root / "ds_a" / "a5.png"], S, global_batch_size=2)


def test_empty_inputs_raise(data):
    root, labels, scaler = data
    with pytest.raises(DataError, match="no images"):
        ds.training_dataset(labels.iloc[:0], root, scaler, S, global_batch_size=4, seed=0)
    with pytest.raises(DataError, match="no images"):
        ds.evaluation_dataset(labels.iloc[:0], root, scaler, S, global_batch_size=4)
    with pytest.raises(DataError, match="no images"):
        ds.image_dataset([], S, global_batch_size=4)
    with pytest.raises(DataError, match="missing column"):
        ds.evaluation_dataset(labels.drop(columns=["qw"]), root, scaler, S, 4)


# --------------------------------------------------------------------------- shapes, cache
def test_drop_remainder_gives_a_static_batch_dimension(data):
    root, labels, scaler = data
    static = ds.training_dataset(labels, root, scaler, S, global_batch_size=5, seed=0,
                                 drop_remainder=True)
    images_spec, targets_spec = static.element_spec
    assert images_spec.shape.as_list() == [5, S, S, 3]
    assert targets_spec["outlier"].shape.as_list() == [5, 1]
    assert [int(images.shape[0]) for images, _ in static] == [5, 5]
    dynamic = ds.training_dataset(labels, root, scaler, S, global_batch_size=5, seed=0)
    assert dynamic.element_spec[0].shape.as_list() == [None, S, S, 3]


def test_file_cache_is_reused_and_keyed_by_image_size(data, tmp_path):
    root, labels, scaler = data
    prefix = str(tmp_path / "cache" / "val")
    first, _ = collect(ds.evaluation_dataset(labels, root, scaler, S, 5, cache=prefix))
    second, _ = collect(ds.evaluation_dataset(labels, root, scaler, S, 5, cache=prefix))
    np.testing.assert_array_equal(first, second)
    other, _ = collect(ds.evaluation_dataset(labels, root, scaler, 16, 5, cache=prefix))
    assert other.shape[1:] == (16, 16, 3)
    assert len({p.name.split(".")[0] for p in (tmp_path / "cache").iterdir()}) == 2


def test_undecodable_images_are_found_by_the_pipelines_own_decoder(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    (tmp_path / "good.jpg").write_bytes(jpeg.tobytes())
    (tmp_path / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 3])
    (tmp_path / "text.png").write_text("not an image")
    paths = [tmp_path / n for n in ("good.jpg", "cut.jpg", "text.png", "missing.jpg")]
    problems = ds.undecodable_images(paths)
    assert sorted(problems) == [1, 2, 3]
    assert "cannot be decoded" in problems[1]
    assert "not a PNG or JPEG" in problems[2] and "does not exist" in problems[3]
