"""Images, pose strings and atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from src import data_io as io


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


def test_list_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert io.list_images(tmp_path) == ["a.JPG", "b.png"]
    with pytest.raises(FileNotFoundError):
        io.list_images(tmp_path / "missing")


def test_thresholds_parse_any_count_and_name_the_bad_field():
    np.testing.assert_array_equal(io.parse_thresholds("0.1;0.5;2", "t.csv, line 2"), [0.1, 0.5, 2])
    for bad in ("0.5;0.1", "-1;2", "nan;1", "a;b"):
        with pytest.raises(io.DataError, match="t.csv, line 3"):
            io.parse_thresholds(bad, "t.csv, line 3")


def test_images_that_cannot_be_read_are_listed_and_named(tmp_path, caplog):
    (tmp_path / "good.png").write_bytes(b"x")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # a dangling link
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is not one
    with caplog.at_level("WARNING"):
        assert io.list_images(tmp_path) == ["gone.jpg", "good.png"]
    assert "gone.jpg" in caplog.text and "broken link" in caplog.text
