"""Images, pose strings, atomic writes, submission building and validation."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src import utils_io as io


def test_format_and_parse_round_trip():
    R = Rotation.random(random_state=0).as_matrix()
    np.testing.assert_allclose(io.parse_numbers(io.format_numbers(R), 9).reshape(3, 3), R, atol=1e-9)
    assert io.format_numbers([np.nan, 1.0, np.inf]) == "nan;1.000000000;nan"
    with pytest.raises(io.DataError, match="here: expected 3 numbers"):
        io.parse_numbers("1;2", 3, "here")


@pytest.mark.parametrize("kind", ["gray", "rgba", "rgb_jpg", "gray16"])
def test_images_of_any_kind_load_as_rgb(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "gray":
        img, name = rng.integers(0, 255, (12, 16), dtype=np.uint8), "a.png"
    elif kind == "rgba":
        img, name = rng.integers(0, 255, (12, 16, 4), dtype=np.uint8), "a.png"
    elif kind == "gray16":
        img, name = rng.integers(0, 65535, (12, 16), dtype=np.uint16), "a.png"
    else:
        img, name = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "a.jpg"
    cv2.imwrite(str(tmp_path / name), img)
    out = io.read_image_rgb(tmp_path / name)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8


def test_rgb_channel_order_survives_a_round_trip(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # red
    io.write_image_rgb(tmp_path / "red.png", img)
    np.testing.assert_array_equal(io.read_image_rgb(tmp_path / "red.png"), img)


def test_missing_and_corrupt_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        io.read_image_rgb(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(io.DataError, match="bad.jpg: cannot decode"):
        io.read_image_rgb(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(io.DataError, match="empty.png"):
        io.read_image_rgb(empty)


def test_atomic_write_gives_an_ordinary_file_mode(tmp_path):
    import os
    import stat
    path = io.write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def predictions():
    R = Rotation.random(3, random_state=1).as_matrix()
    return [io.PosePrediction("d1", "a.png", "cluster0", R[0], np.array([1.0, 2, 3])),
            io.PosePrediction("d1", "b.png", "outliers", np.full((3, 3), np.nan), np.full(3, np.nan)),
            io.PosePrediction("d2", "c.png", "cluster0", R[2], np.zeros(3))]


def test_build_submission_follows_sample_rows_and_ids(tmp_path):
    sample = pd.DataFrame({"image_id": ["x3", "x1", "x2"], "dataset": ["d2", "d1", "d1"],
                           "scene": "outliers", "image": ["c.png", "a.png", "b.png"],
                           "rotation_matrix": "", "translation_vector": ""})
    sub = io.build_submission(predictions(), sample)
    assert list(sub["image_id"]) == ["x3", "x1", "x2"]
    assert list(sub["image"]) == ["c.png", "a.png", "b.png"]
    io.validate_submission(sub, expected_images=sample)
    path = io.write_submission(sub, tmp_path / "submission.csv", expected_images=sample)
    back = io.read_submission(path)
    assert list(back.columns) == io.SUBMISSION_COLUMNS
    assert back.loc[2, "rotation_matrix"] == ";".join(["nan"] * 9)


def test_build_submission_without_sample_uses_default_ids():
    sub = io.build_submission(predictions())
    assert list(sub["image_id"]) == ["d1_a.png_public", "d1_b.png_public", "d2_c.png_public"]
    with pytest.raises(io.DataError, match="no prediction for 1"):
        io.build_submission(predictions()[:2], sub)


@pytest.mark.parametrize("column, value, message", [
    ("rotation_matrix", "1;0;0;0;1;0;0;0;-1", "line 2: rotation_matrix is not a rotation"),
    ("rotation_matrix", "nan;0;0;0;1;0;0;0;1", "line 2: rotation_matrix is partly nan"),
    ("translation_vector", "1;nan;2", "line 2: translation_vector is partly nan"),
    ("translation_vector", "1;2", "line 2, field translation_vector"),
    ("scene", "", "line 2: empty scene name"),
])
def test_validator_names_the_bad_row(tmp_path, column, value, message):
    sub = io.build_submission(predictions())
    sub.loc[0, column] = value
    with pytest.raises(io.DataError, match=message):
        io.validate_submission(sub)
    target = tmp_path / "submission.csv"
    with pytest.raises(io.DataError):
        io.write_submission(sub, target)
    assert not target.exists()  # nothing half-written


def test_validator_rejects_duplicates_and_wrong_image_sets():
    sub = io.build_submission(predictions())
    doubled = pd.concat([sub, sub.iloc[[0]]], ignore_index=True)
    with pytest.raises(io.DataError, match="appears more than once"):
        io.validate_submission(doubled)
    with pytest.raises(io.DataError, match="missing e.g."):
        io.validate_submission(sub.iloc[:2], expected_images=sub)
    with pytest.raises(io.DataError, match="missing column"):
        io.validate_submission(sub.drop(columns=["image_id"]))


def test_list_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert io.list_images(tmp_path) == ["a.JPG", "b.png"]
    with pytest.raises(FileNotFoundError):
        io.list_images(tmp_path / "missing")
