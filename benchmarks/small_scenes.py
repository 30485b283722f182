"""Small scenes from large ones: a competition-layout folder whose every dataset becomes
``--draws`` datasets, each holding ``--images`` photos drawn at random from every scene
(and all the dataset's outlier photos): real photos to measure how the geometric pipeline
holds scenes of a handful of images (issue 12, "small scenes"), never seen as such.

    python -m src.data_layout ../shared/data/realdev2 /tmp/realdev2_input
    python benchmarks/small_scenes.py /tmp/realdev2_input /tmp/realdev2_small5 --images 5
    python benchmarks/benchmark_geometric.py --seeds 3 --with-baseline \
        --data-dir /tmp/realdev2_small5

The draws are seeded (``--seed``, and each dataset by its name, so that one dataset's draws
do not depend on the others); a scene with no more photos than asked keeps them all (its
draws are then alike). Photos are linked, not copied; the labels, thresholds and sample
submission (if any) keep only the photos drawn, under the new dataset names
("<dataset>_n5_d0"). The destination must not exist yet, nor hold the source.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.data_io import DataError, write_csv_atomic  # noqa: E402
from src.submission import (OUTLIER_SCENE, check_pose_rows, default_image_id,  # noqa: E402
                            read_submission)


def draw_small_scenes(labels: pd.DataFrame, images: int, draws: int, seed: int
                      ) -> pd.DataFrame:
    """Rows of ``labels`` (columns dataset, scene, image, ...) for each draw, with a column
    ``new_dataset``: per dataset and draw, ``images`` photos of each scene drawn without
    replacement (all of a smaller scene) and every outlier photo. Each dataset's draws come
    from a generator seeded by ``seed`` and the dataset's name, so they differ from one
    another and do not depend on the other datasets."""
    if images < 1 or draws < 1:
        raise ValueError(f"images and draws must be >= 1, got {images} and {draws}")
    parts = []
    for dataset, rows in labels.groupby("dataset", sort=True):
        rng = np.random.default_rng([seed, zlib.crc32(str(dataset).encode())])
        for draw in range(draws):
            chosen = []
            for scene, scene_rows in rows.groupby("scene", sort=True):
                if scene == OUTLIER_SCENE or len(scene_rows) <= images:
                    chosen.append(scene_rows)
                else:
                    picks = rng.choice(len(scene_rows), size=images, replace=False)
                    chosen.append(scene_rows.iloc[np.sort(picks)])
            part = pd.concat(chosen).sort_values("image", kind="stable")
            parts.append(part.assign(new_dataset=f"{dataset}_n{images}_d{draw}"))
    return pd.concat(parts, ignore_index=True)


def _check_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    """DataError naming ``path`` unless ``frame`` has ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(frame.columns)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="competition-layout folder (test/, CSVs)")
    parser.add_argument("destination", type=Path, help="a new folder (refused if it exists)")
    parser.add_argument("--images", type=int, default=5, help="photos per scene (default 5)")
    parser.add_argument("--draws", type=int, default=3,
                        help="draws (new datasets) per source dataset (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (0)")
    args = parser.parse_args(argv)

    # every check before anything is written
    source, destination = args.source.resolve(), args.destination.resolve()
    if destination.exists():
        parser.error(f"{args.destination} exists: give a new folder")
    if source == destination or source.is_relative_to(destination) \
            or destination.is_relative_to(source):
        parser.error("the destination must be a new folder apart from the source")
    sample_path = source / "sample_submission.csv"
    try:
        labels = read_submission(source / "test_labels.csv")
        check_pose_rows(labels, str(source / "test_labels.csv"))
        thresholds = read_submission(source / "test_thresholds.csv")
        _check_columns(thresholds, ["dataset", "scene", "thresholds"],
                       source / "test_thresholds.csv")
        sample = read_submission(sample_path) if sample_path.is_file() else None
        if sample is not None:
            _check_columns(sample, ["image_id", "dataset", "image"], sample_path)
        drawn = draw_small_scenes(labels, args.images, args.draws, args.seed)
    except (FileNotFoundError, DataError) as exc:
        parser.error(f"{exc} (lay the data out with python -m src.data_layout first)")
    except ValueError as exc:
        parser.error(str(exc))
    photos = {source / "test" / row.dataset / row.image for row in labels.itertuples()}
    missing = sorted(str(photo) for photo in photos if not photo.is_file())
    if missing:
        parser.error(f"{len(missing)} labelled photo(s) not found, first {missing[0]}")

    for row in drawn.itertuples():
        target = destination / "test" / row.new_dataset / row.image
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(source / "test" / row.dataset / row.image), target)
    write_csv_atomic(drawn.assign(dataset=drawn["new_dataset"])[labels.columns],
                     destination / "test_labels.csv")
    scenes = drawn[["new_dataset", "dataset", "scene"]].drop_duplicates()
    new_thresholds = scenes.merge(thresholds, on=["dataset", "scene"])
    write_csv_atomic(new_thresholds.assign(dataset=new_thresholds["new_dataset"])
                     [thresholds.columns], destination / "test_thresholds.csv")
    if sample is not None:
        drawn_keys = drawn[["new_dataset", "dataset", "image"]]
        new_sample = drawn_keys.merge(sample, on=["dataset", "image"])
        new_sample["image_id"] = [default_image_id(d, im) for d, im in
                                  zip(new_sample["new_dataset"], new_sample["image"])]
        write_csv_atomic(new_sample.assign(dataset=new_sample["new_dataset"])[sample.columns],
                         destination / "sample_submission.csv")
    counts = drawn.groupby("new_dataset").size()
    print(f"wrote {args.destination}: {len(counts)} datasets of {counts.min()}-{counts.max()} "
          f"photos ({args.images} per scene, outliers kept)")


if __name__ == "__main__":
    main()
