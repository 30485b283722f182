"""Files in and out: images, pose strings, CSVs and atomic writes.

The competition's CSVs store a rotation as 9 numbers (row-major) and a translation as 3,
each joined by ``;``; ``nan`` marks an unknown pose. Everything that reads or writes those
strings goes through :func:`format_numbers` and :func:`parse_numbers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

LABEL_COLUMNS = ["dataset", "scene", "image", "rotation_matrix", "translation_vector"]
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


def parse_thresholds(text: str, where: str = "") -> np.ndarray:
    """``t1;t2;...`` (a scene's IMC thresholds, any count) -> non-negative, non-decreasing
    float array; DataError names ``where`` (file, line, field) otherwise."""
    values = parse_numbers(text, len(str(text).strip().split(";")), where)
    if np.any(np.isnan(values)) or np.any(values < 0) or np.any(np.diff(values) < 0):
        raise DataError(f"{where}: expected non-negative increasing numbers, got {text!r}")
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
    """Sorted names of the entries directly inside ``folder`` that look like images (a
    PNG/JPEG suffix, not a folder). Entries that are not readable files (a dangling link, a
    socket...) are listed too, with a warning naming them: an image must never vanish from a
    submission silently; the stages that read it make it an outlier."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    names, unreadable = [], []
    for entry in folder.iterdir():
        if entry.suffix not in IMAGE_SUFFIXES or entry.is_dir():
            continue
        names.append(entry.name)
        if not entry.is_file():
            unreadable.append(entry.name)
    if unreadable:
        log.warning("%s: %d image entr%s that cannot be read as a file (a broken link?), kept "
                    "as outliers: %s", folder, len(unreadable),
                    "y" if len(unreadable) == 1 else "ies", ", ".join(sorted(unreadable)[:10]))
    return sorted(names)
