"""submission.csv: one predicted scene and pose per test image, its builder, its validator,
and the list of test images it must cover.

Scenes are named ``cluster<k>`` (k = 0, 1, ...) per dataset, or ``outliers``; use
:func:`cluster_name` / :func:`cluster_index` rather than formatting or slicing the names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.data_io import DataError, format_numbers, list_images, parse_numbers, write_csv_atomic
from src.geometry import is_rotation, rotation_to_quat_xyzw

SUBMISSION_COLUMNS = ["image_id", "dataset", "scene", "image", "rotation_matrix",
                      "translation_vector"]
OUTLIER_SCENE = "outliers"
CLUSTER_PREFIX = "cluster"
log = logging.getLogger(__name__)
# Columns of a pose table (predictions_*.csv): quaternion x, y, z, w (scalar last, w >= 0)
# and translation, both world-to-camera.
QUAT_COLUMNS = ["qx", "qy", "qz", "qw"]
TRANSLATION_COLUMNS = ["tx", "ty", "tz"]


def cluster_name(index: int) -> str:
    """The scene name of cluster ``index`` (``cluster0``, ``cluster1``, ...)."""
    return f"{CLUSTER_PREFIX}{int(index)}"


def cluster_index(name: str) -> int:
    """``cluster<k>`` -> k; ValueError for ``outliers`` or any other name."""
    if not name.startswith(CLUSTER_PREFIX) or not name[len(CLUSTER_PREFIX):].isdigit():
        raise ValueError(f"not a cluster name: {name!r} (expected {CLUSTER_PREFIX}<number>)")
    return int(name[len(CLUSTER_PREFIX):])


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
    check_pose_rows(frame, name, SUBMISSION_COLUMNS)
    if frame["image_id"].duplicated().any():
        row = int(np.argmax(frame["image_id"].duplicated().to_numpy()))
        raise DataError(f"{name}, line {row + 2}: duplicate image_id {frame['image_id'].iloc[row]!r}")
    if expected_images is not None:
        got = set(zip(frame["dataset"], frame["image"]))
        want = set(zip(expected_images["dataset"], expected_images["image"]))
        if got != want:
            lacking = sorted(want - got)[:5]
            extra = sorted(got - want)[:5]
            raise DataError(f"{name}: images differ from the expected test images "
                            f"(missing e.g. {lacking}, unexpected e.g. {extra})")


# What the scorer needs of a submission (image_id is the competition's bookkeeping only).
POSE_COLUMNS = ["dataset", "scene", "image", "rotation_matrix", "translation_vector"]


def check_pose_rows(frame: pd.DataFrame, name: str,
                    columns: list[str] = POSE_COLUMNS) -> None:
    """DataError naming the file, line and field unless ``frame`` has ``columns``, at least
    one row, one row per (dataset, image), a scene name on every row, rotations that are
    orthonormal with det +1 or all ``nan``, and translations finite or all ``nan``: the
    submission rules, for the writer and the scorer alike."""
    missing_cols = [c for c in columns if c not in frame.columns]
    if missing_cols:
        raise DataError(f"{name}: missing column(s) {missing_cols} (found "
                        f"{list(frame.columns)})")
    if frame.empty:
        raise DataError(f"{name}: no rows")
    duplicated = frame.duplicated(subset=["dataset", "image"], keep=False)
    if duplicated.any():
        row = int(np.argmax(duplicated.to_numpy()))
        raise DataError(f"{name}, line {row + 2}: image {frame['image'].iloc[row]!r} of "
                        f"dataset {frame['dataset'].iloc[row]!r} appears more than once")
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


def write_submission(frame: pd.DataFrame, path: str | os.PathLike,
                     expected_images: pd.DataFrame | None = None) -> Path:
    """Validate, then write submission.csv atomically. Nothing is written if it is invalid."""
    validate_submission(frame, expected_images, name=str(path))
    return write_csv_atomic(frame[SUBMISSION_COLUMNS], path)


def write_run_submission(predictions: list[PosePrediction], test_images: pd.DataFrame,
                         run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None
                         ) -> Path:
    """Build, validate and write ``run_dir/submission.csv`` and, given ``output_dir``, its
    copy ``output_dir/submission.csv`` (where Kaggle looks for it); returns the run's file."""
    submission = build_submission(predictions, test_images)
    path = write_submission(submission, Path(run_dir) / "submission.csv", test_images)
    if output_dir is not None:
        write_submission(submission, Path(output_dir) / "submission.csv", test_images)
    log.info("wrote %s (%d images in %d datasets, validated)", path, len(submission),
             submission["dataset"].nunique())
    return path


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission (or labels) CSV with every column as text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None


def is_photo_folder(data_dir: str | os.PathLike) -> bool:
    """True for a plain folder of photos (images directly inside, no ``test/`` and no
    ``sample_submission.csv``): what a person with their own photos has. It is one dataset,
    named after the folder."""
    data_dir = Path(data_dir)
    return (data_dir.is_dir() and not (data_dir / "test").is_dir()
            and not (data_dir / "sample_submission.csv").is_file()
            and bool(list_images(data_dir)))


def test_image_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding one sub-folder of images per test dataset: ``data_dir/test`` in the
    competition layout, the parent of a plain folder of photos (see :func:`is_photo_folder`)."""
    data_dir = Path(os.path.abspath(data_dir))  # "." has no name and no parent to name
    return data_dir.parent if is_photo_folder(data_dir) else data_dir / "test"


def list_test_images(data_dir: str | os.PathLike) -> pd.DataFrame:
    """The test images to predict, as (image_id, dataset, image) rows.

    Follows ``sample_submission.csv`` when the data has one (the competition's order and
    image_id; every listed image must exist), else every image under ``test/<dataset>/``, or,
    for a plain folder of photos, every image in it as one dataset named after the folder.
    """
    data_dir = Path(os.path.abspath(data_dir))  # "." has no name to call the dataset
    if is_photo_folder(data_dir):
        return pd.DataFrame([(default_image_id(data_dir.name, image), data_dir.name, image)
                             for image in list_images(data_dir)],
                            columns=["image_id", "dataset", "image"])
    sample_path = data_dir / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_submission(sample_path)
        missing_cols = [c for c in ("image_id", "dataset", "image") if c not in sample.columns]
        if missing_cols:
            raise DataError(f"{sample_path}: missing column(s) {missing_cols}")
        first_line: dict[tuple[str, str], int] = {}
        for row, (dataset, image) in enumerate(zip(sample["dataset"], sample["image"])):
            if (dataset, image) in first_line:
                raise DataError(f"{sample_path}, line {row + 2}: image {dataset}/{image} is "
                                f"listed again (first on line {first_line[dataset, image]}); "
                                f"each test image must appear once")
            first_line[dataset, image] = row + 2
            if not (data_dir / "test" / dataset / image).is_file():
                raise DataError(f"{sample_path}, line {row + 2}: image "
                                f"{data_dir / 'test' / dataset / image} does not exist")
        return sample[["image_id", "dataset", "image"]].reset_index(drop=True)
    test_dir = data_dir / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"no test images in {data_dir}: neither {sample_path.name} nor "
                                f"test/ is there, nor any PNG/JPEG photo")
    rows = []
    for folder in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        images = list_images(folder)
        if not images:
            log.warning("%s: a dataset folder with no PNG/JPEG image; nothing to predict there",
                        folder)
        rows += [(default_image_id(folder.name, image), folder.name, image) for image in images]
    if not rows:
        raise DataError(f"{test_dir}: no PNG/JPEG images in any dataset folder")
    return pd.DataFrame(rows, columns=["image_id", "dataset", "image"])


def pose_table(predictions: list[PosePrediction]) -> pd.DataFrame:
    """Submission rows as a table: dataset, image, scene, qx..qw, tx..tz (NaN when no pose)."""
    R = np.array([p.R_cw for p in predictions], dtype=np.float64).reshape(-1, 3, 3)
    t = np.array([p.t_cw for p in predictions], dtype=np.float64).reshape(-1, 3)
    posed = np.isfinite(R).all(axis=(1, 2)) & np.isfinite(t).all(axis=1)
    q = np.full((len(predictions), 4), np.nan)
    if posed.any():
        q[posed] = rotation_to_quat_xyzw(R[posed])
    table = pd.DataFrame({"dataset": [p.dataset for p in predictions],
                          "image": [p.image for p in predictions],
                          "scene": [p.scene for p in predictions]})
    table[QUAT_COLUMNS] = q
    table[TRANSLATION_COLUMNS] = t
    return table
