"""Small scenes from large ones: a competition-layout folder whose every dataset becomes
``--draws`` datasets, each holding ``--images`` photos drawn at random from every scene
(and all the dataset's outlier photos): real photos to measure how the geometric pipeline
holds scenes of a handful of images (issue 12, "small scenes"), never seen as such.

    python -m src.data_layout ../shared/data/realdev2 /tmp/realdev2_input
    python benchmarks/small_scenes.py /tmp/realdev2_input /tmp/realdev2_small5 --images 5
    python benchmarks/benchmark_geometric.py --seeds 3 --with-baseline \
        --data-dir /tmp/realdev2_small5

A draw is seeded (``--seed``) and the draws of one dataset differ; a scene with fewer photos
than asked keeps them all. Photos are linked, not copied; the labels, thresholds and sample
submission keep only the photos drawn, under the new dataset names ("<dataset>_n5_d0").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.data_io import write_csv_atomic  # noqa: E402
from src.submission import OUTLIER_SCENE  # noqa: E402


def draw_small_scenes(labels: pd.DataFrame, images: int, draws: int, seed: int
                      ) -> pd.DataFrame:
    """Rows of ``labels`` (columns dataset, scene, image, ...) for each draw, with a column
    ``new_dataset``: per dataset and draw, ``images`` photos of each scene drawn without
    replacement (all of a smaller scene) and every outlier photo. The draws of a dataset
    come from one generator seeded by ``seed``, so they differ from one another."""
    if images < 1 or draws < 1:
        raise ValueError(f"images and draws must be >= 1, got {images} and {draws}")
    rng = np.random.default_rng(seed)
    parts = []
    for dataset, rows in labels.groupby("dataset", sort=True):
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="competition-layout folder (test/, CSVs)")
    parser.add_argument("destination", type=Path, help="new folder (replaced if present)")
    parser.add_argument("--images", type=int, default=5, help="photos per scene (default 5)")
    parser.add_argument("--draws", type=int, default=3, help="datasets per dataset (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (0)")
    args = parser.parse_args(argv)

    labels_path = args.source / "test_labels.csv"
    if not labels_path.is_file():
        parser.error(f"{labels_path} not found: lay the data out with python -m "
                     "src.data_layout first")
    labels = pd.read_csv(labels_path, dtype=str)
    try:
        drawn = draw_small_scenes(labels, args.images, args.draws, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if args.destination.resolve() == args.source.resolve():
        parser.error("the destination must be a new folder, not the source")
    shutil.rmtree(args.destination, ignore_errors=True)
    for row in drawn.itertuples():
        photo = args.source / "test" / row.dataset / row.image
        if not photo.is_file():
            parser.error(f"{photo} (labelled in {labels_path}) not found")
        target = args.destination / "test" / row.new_dataset / row.image
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(photo), target)

    kept = drawn[["new_dataset", "image", "dataset"]]
    new_labels = drawn.assign(dataset=drawn["new_dataset"])[labels.columns]
    write_csv_atomic(new_labels, args.destination / "test_labels.csv")
    thresholds = pd.read_csv(args.source / "test_thresholds.csv", dtype=str)
    scenes = drawn[["new_dataset", "dataset", "scene"]].drop_duplicates()
    new_thresholds = scenes.merge(thresholds, on=["dataset", "scene"])
    write_csv_atomic(new_thresholds.assign(dataset=new_thresholds["new_dataset"])
                     [thresholds.columns], args.destination / "test_thresholds.csv")
    sample = pd.read_csv(args.source / "sample_submission.csv", dtype=str)
    new_sample = kept.merge(sample, on=["dataset", "image"])
    new_sample = new_sample.assign(
        dataset=new_sample["new_dataset"],
        image_id=new_sample["new_dataset"] + "_" + new_sample["image"] + "_public")
    write_csv_atomic(new_sample[sample.columns], args.destination / "sample_submission.csv")
    counts = drawn.groupby("new_dataset").size()
    print(f"wrote {args.destination}: {len(counts)} datasets of {counts.min()}-{counts.max()} "
          f"photos ({args.images} per scene, outliers kept)")


if __name__ == "__main__":
    main()
