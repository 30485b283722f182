"""Lay labelled data out as a competition input, so that it can be predicted and scored.

``python -m src.data_layout SRC DST`` takes a folder in training layout (``train/<dataset>``,
``train_labels.csv``, ``train_thresholds.csv``; e.g. ../shared/data/realdev) and writes DST
with ``test/<dataset>`` (symbolic links to the images), ``test_labels.csv``,
``test_thresholds.csv`` and a ``sample_submission.csv``, plus the original train files, so
that ``python main.py --data-dir DST`` predicts those images and prints their score.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from src.data_io import DataError, list_images, write_csv_atomic
from src.submission import SUBMISSION_COLUMNS, default_image_id, read_submission


def layout_as_test(src: str | os.PathLike, dst: str | os.PathLike,
                   datasets: list[str] | None = None) -> Path:
    """Write DST (see module doc) from SRC; ``datasets`` restricts to some of them."""
    src, dst = Path(src).resolve(), Path(dst)
    labels = read_submission(src / "train_labels.csv")
    thresholds = read_submission(src / "train_thresholds.csv")
    if datasets:
        unknown = sorted(set(datasets) - set(labels["dataset"]))
        if unknown:
            raise DataError(f"{src / 'train_labels.csv'}: no dataset(s) {unknown}")
        labels = labels[labels["dataset"].isin(datasets)]
        thresholds = thresholds[thresholds["dataset"].isin(datasets)]
    for dataset in sorted(labels["dataset"].unique()):
        on_disk = set(list_images(src / "train" / dataset))
        listed = set(labels.loc[labels["dataset"] == dataset, "image"])
        if listed - on_disk:
            raise DataError(f"{src / 'train' / dataset}: labelled images missing on disk, "
                            f"e.g. {sorted(listed - on_disk)[:3]}")
        for split in ("train", "test"):
            target = dst / split / dataset
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(listed):
                link = target / image
                if not link.exists():
                    link.symlink_to(src / "train" / dataset / image)
    for name, frame in (("train_labels.csv", labels), ("test_labels.csv", labels),
                        ("train_thresholds.csv", thresholds),
                        ("test_thresholds.csv", thresholds)):
        write_csv_atomic(frame, dst / name)
    sample = labels[["dataset", "image"]].copy()
    sample.insert(0, "image_id", [default_image_id(d, i) for d, i in
                                  zip(sample["dataset"], sample["image"])])
    sample.insert(2, "scene", "outliers")
    sample["rotation_matrix"] = ";".join(["nan"] * 9)
    sample["translation_vector"] = ";".join(["nan"] * 3)
    write_csv_atomic(sample[SUBMISSION_COLUMNS], dst / "sample_submission.csv")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data_layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="folder in training layout")
    parser.add_argument("dst", type=Path, help="folder to write")
    parser.add_argument("--datasets", nargs="*", help="only these datasets")
    parser.add_argument("--overwrite", action="store_true", help="remove DST first")
    args = parser.parse_args(argv)
    if args.dst.exists() and not args.dst.is_dir():
        print(f"error: {args.dst} is a file; give a folder to write", file=sys.stderr)
        return 2
    if args.dst.is_dir() and any(args.dst.iterdir()):
        if not args.overwrite:
            print(f"error: {args.dst} already holds files; pass --overwrite to replace it, or "
                  f"choose another folder", file=sys.stderr)
            return 2
        shutil.rmtree(args.dst)
    try:
        out = layout_as_test(args.src, args.dst, args.datasets)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
