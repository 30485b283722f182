"""One dataset of a competition-layout folder, with some photos turned by quarter turns and
their labels turned with them: real photos to measure the rotation retry on
(``--rotation-retry``, README "Sideways and upside-down photos").

    python -m src.data_layout ../shared/data/realdev /tmp/realdev_input
    python benchmarks/turned_photos.py /tmp/realdev_input entry /tmp/entry_turned \
        entry_003.jpg=90 entry_007.jpg=270
    python main.py --pipeline geometric --data-dir /tmp/entry_turned --features aliked

A turn is degrees counter-clockwise as displayed (np.rot90's k = degrees / 90). The other
photos are linked, not copied; a turned one is written as JPEG quality 98.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.geometric.features import QUARTER_TURNS, turn_image  # noqa: E402

# The turned camera's axes in the camera's own (x right, y down, z forward): a photo turned
# by 90 degrees has x' = y and y' = -x (its pixel x' is the photo's row y), and so on.
CAMERA_TURNS = {90: np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
                180: np.diag([-1, -1, 1]),
                270: np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])}


def turned_pose(rotation: str, translation: str, degrees: int) -> tuple[str, str]:
    """A label's world-to-camera pose (``;``-joined R row-major and t) for the photo turned
    by ``degrees``: the same camera centre, the axes turned about the optical axis."""
    A = CAMERA_TURNS[degrees]
    R = np.array([float(v) for v in rotation.split(";")]).reshape(3, 3)
    t = np.array([float(v) for v in translation.split(";")])
    return (";".join(repr(float(v)) for v in (A @ R).ravel()),
            ";".join(repr(float(v)) for v in A @ t))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="competition-layout folder (test/, CSVs)")
    parser.add_argument("dataset", help="the dataset of source/test to copy")
    parser.add_argument("destination", type=Path, help="new folder (replaced if present)")
    parser.add_argument("turns", nargs="+", metavar="IMAGE=DEGREES")
    args = parser.parse_args(argv)
    turns = {}
    for item in args.turns:
        name, _, degrees = item.partition("=")
        if not degrees.isdigit() or int(degrees) not in QUARTER_TURNS[1:]:
            parser.error(f"{item!r}: expected IMAGE=DEGREES with DEGREES one of "
                         f"{QUARTER_TURNS[1:]}")
        turns[name] = int(degrees)

    source = args.source / "test" / args.dataset
    target = args.destination / "test" / args.dataset
    missing = sorted(set(turns) - {p.name for p in source.iterdir()})
    if missing:  # before anything is deleted or written
        parser.error(f"not in {source}: {missing}")
    shutil.rmtree(args.destination, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in turns:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            cv2.imwrite(str(target / path.name), turn_image(image, turns[path.name]),
                        [cv2.IMWRITE_JPEG_QUALITY, 98])
        else:
            os.symlink(os.path.realpath(path), target / path.name)

    labels = pd.read_csv(args.source / "test_labels.csv", dtype=str)
    labels = labels[labels["dataset"] == args.dataset].reset_index(drop=True)
    for i, row in labels.iterrows():
        if row["image"] in turns:
            labels.loc[i, ["rotation_matrix", "translation_vector"]] = turned_pose(
                row["rotation_matrix"], row["translation_vector"], turns[row["image"]])
    labels.to_csv(args.destination / "test_labels.csv", index=False)
    for name in ("test_thresholds.csv", "sample_submission.csv"):
        frame = pd.read_csv(args.source / name, dtype=str)
        frame[frame["dataset"] == args.dataset].to_csv(args.destination / name, index=False)
    print(f"wrote {args.destination}: {args.dataset} with {len(turns)} photo(s) turned")


if __name__ == "__main__":
    main()
