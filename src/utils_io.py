"""Files in and out: images, pose strings, atomic writes, submission.csv and its validator.

The competition's CSVs store a rotation as 9 numbers (row-major) and a translation as 3,
each joined by ``;``; ``nan`` marks an unknown pose. Everything that reads or writes those
strings goes through :func:`format_numbers` and :func:`parse_numbers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd

from src.geometry import is_rotation

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ["image_id", "dataset", "scene", "image", "rotation_matrix",
                      "translation_vector"]
LABEL_COLUMNS = ["dataset", "scene", "image", "rotation_matrix", "translation_vector"]
OUTLIER_SCENE = "outliers"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class DataError(ValueError):
    """Bad input data; the message names the file, the row and what was expected."""


# --------------------------------------------------------------------------- pose strings
def format_numbers(values: np.ndarray) -> str:
    """Numbers -> ``a;b;c`` with 9 significant decimals; non-finite values become ``nan``."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return ";".join("nan" if not np.isfinite(v) else f"{v:.9f}" for v in flat)


def parse_numbers(text: str, count: int, where: str = "") -> np.ndarray:
    """``a;b;c`` -> float array of exactly ``count`` values (``nan`` allowed).

    ``where`` names the file, line and field for the error message.
    """
    parts = str(text).strip().split(";")
    if len(parts) != count:
        raise DataError(f"{where}: expected {count} numbers separated by ';', got "
                        f"{len(parts)} in {text!r}")
    try:
        values = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise DataError(f"{where}: not a number in {text!r}") from None
    if np.any(np.isinf(values)):
        raise DataError(f"{where}: infinite value in {text!r}")
    return values


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A crash or exception mid-write leaves the previous file (or nothing) in place, never a
    half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


# --------------------------------------------------------------------------- images
def decode_image_file(path: str | os.PathLike) -> np.ndarray:
    """The image as OpenCV decodes it (``IMREAD_UNCHANGED``: EXIF orientation ignored, any
    channel count and depth). FileNotFoundError / DataError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not PNG/JPEG)")
    return image


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read PNG/JPEG as uint8 RGB (H, W, 3); grayscale and RGBA are converted.

    Raises FileNotFoundError for a missing file and DataError for one that cannot be decoded.
    """
    image = decode_image_file(path)
    if image.dtype == np.uint16:
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image_rgb(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 RGB image atomically (format from the suffix)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png",
                               cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"{path}: OpenCV could not encode the image")
    with atomic_path(path) as tmp:
        encoded.tofile(tmp)
    return path


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted file names of the images (PNG/JPEG) directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- submission
@dataclass(frozen=True)
class PosePrediction:
    """One image's predicted scene and pose (world-to-camera); NaN pose = not registered."""

    dataset: str
    image: str
    scene: str
    R_cw: np.ndarray
    t_cw: np.ndarray


def default_image_id(dataset: str, image: str) -> str:
    """The competition's image_id form, used when no sample_submission.csv is given."""
    return f"{dataset}_{image}_public"


def build_submission(predictions: list[PosePrediction],
                     sample_submission: pd.DataFrame | None = None) -> pd.DataFrame:
    """Predictions -> submission DataFrame in the competition format.

    With a ``sample_submission`` the output follows its rows and ``image_id`` exactly; every
    sample row needs a prediction (missing ones raise DataError naming them).
    """
    by_key = {(p.dataset, p.image): p for p in predictions}
    if len(by_key) != len(predictions):
        raise DataError("predictions contain the same (dataset, image) twice")
    if sample_submission is not None:
        keys = list(zip(sample_submission["dataset"], sample_submission["image"]))
        ids = list(sample_submission["image_id"])
        missing = [f"{d}/{i}" for d, i in keys if (d, i) not in by_key]
        if missing:
            raise DataError(f"no prediction for {len(missing)} image(s) of sample_submission, "
                            f"e.g. {missing[:5]}")
    else:
        keys = list(by_key)
        ids = [default_image_id(d, i) for d, i in keys]
    rows = []
    for image_id, key in zip(ids, keys):
        p = by_key[key]
        rows.append([image_id, p.dataset, p.scene, p.image, format_numbers(p.R_cw),
                     format_numbers(p.t_cw)])
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)


def validate_submission(frame: pd.DataFrame, expected_images: pd.DataFrame | None = None,
                        name: str = "submission.csv") -> None:
    """Raise DataError if the submission is not valid; the message names the row.

    Checks the columns, one row per (dataset, image), rotations that are orthonormal with
    det +1 or all ``nan``, translations finite or all ``nan``, and, when
    ``expected_images`` (columns dataset, image) is given, exactly those images.
    """
    missing_cols = [c for c in SUBMISSION_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise DataError(f"{name}: missing column(s) {missing_cols}")
    duplicated = frame.duplicated(subset=["dataset", "image"], keep=False)
    if duplicated.any():
        row = int(np.argmax(duplicated.to_numpy()))
        raise DataError(f"{name}, line {row + 2}: image {frame['image'].iloc[row]!r} of "
                        f"dataset {frame['dataset'].iloc[row]!r} appears more than once")
    if frame["image_id"].duplicated().any():
        row = int(np.argmax(frame["image_id"].duplicated().to_numpy()))
        raise DataError(f"{name}, line {row + 2}: duplicate image_id {frame['image_id'].iloc[row]!r}")
    for row, rec in enumerate(frame.itertuples(index=False)):
        where = f"{name}, line {row + 2}"
        if not isinstance(rec.scene, str) or not rec.scene:
            raise DataError(f"{where}: empty scene name")
        R = parse_numbers(rec.rotation_matrix, 9, f"{where}, field rotation_matrix")
        t = parse_numbers(rec.translation_vector, 3, f"{where}, field translation_vector")
        if np.any(np.isnan(R)) and not np.all(np.isnan(R)):
            raise DataError(f"{where}: rotation_matrix is partly nan")
        if not np.any(np.isnan(R)) and not is_rotation(R.reshape(3, 3)):
            raise DataError(f"{where}: rotation_matrix is not a rotation (orthonormal, det +1)")
        if np.any(np.isnan(t)) and not np.all(np.isnan(t)):
            raise DataError(f"{where}: translation_vector is partly nan")
    if expected_images is not None:
        got = set(zip(frame["dataset"], frame["image"]))
        want = set(zip(expected_images["dataset"], expected_images["image"]))
        if got != want:
            lacking = sorted(want - got)[:5]
            extra = sorted(got - want)[:5]
            raise DataError(f"{name}: images differ from the expected test images "
                            f"(missing e.g. {lacking}, unexpected e.g. {extra})")


def write_submission(frame: pd.DataFrame, path: str | os.PathLike,
                     expected_images: pd.DataFrame | None = None) -> Path:
    """Validate, then write submission.csv atomically. Nothing is written if it is invalid."""
    validate_submission(frame, expected_images, name=str(path))
    return write_csv_atomic(frame[SUBMISSION_COLUMNS], path)


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission (or labels) CSV with every column as text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def list_test_images(data_dir: str | os.PathLike) -> pd.DataFrame:
    """The test images to predict, as (image_id, dataset, image) rows.

    Follows ``sample_submission.csv`` when the data has one (the competition's order and
    image_id; every listed image must exist), else every image under ``test/<dataset>/``.
    """
    data_dir = Path(data_dir)
    sample_path = data_dir / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_submission(sample_path)
        missing_cols = [c for c in ("image_id", "dataset", "image") if c not in sample.columns]
        if missing_cols:
            raise DataError(f"{sample_path}: missing column(s) {missing_cols}")
        for row, (dataset, image) in enumerate(zip(sample["dataset"], sample["image"])):
            if not (data_dir / "test" / dataset / image).is_file():
                raise DataError(f"{sample_path}, line {row + 2}: image "
                                f"{data_dir / 'test' / dataset / image} does not exist")
        return sample[["image_id", "dataset", "image"]].reset_index(drop=True)
    test_dir = data_dir / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"no test images: neither {sample_path} nor {test_dir} exists")
    rows = [(default_image_id(d.name, image), d.name, image)
            for d in sorted(test_dir.iterdir()) if d.is_dir() for image in list_images(d)]
    if not rows:
        raise DataError(f"{test_dir}: no PNG/JPEG images in any dataset folder")
    return pd.DataFrame(rows, columns=["image_id", "dataset", "image"])
