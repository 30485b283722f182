"""The baseline a user would pick instead of this project: plain pycolmap with its defaults.

Per test dataset: SIFT extraction, exhaustive matching, incremental mapping, all with
pycolmap's default options; every reconstructed model is a cluster, unregistered images are
outliers. Prints the IMC 2025 score (when test labels exist) and the wall time per stage.

    python benchmarks/benchmark_pycolmap_baseline.py --data-dir DIR [--work-dir DIR]

DIR is a competition-layout folder (e.g. the demo data, or realdev laid out with
``python -m src.data_layout ../shared/data/realdev /tmp/realdev_input``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pycolmap  # noqa: E402

from src.data_io import write_csv_atomic  # noqa: E402
from src.evaluation import score_submission  # noqa: E402
from src.submission import (OUTLIER_SCENE, PosePrediction, build_submission,  # noqa: E402
                            cluster_name, list_test_images, write_submission)


def cam_from_world(image) -> tuple[np.ndarray, np.ndarray]:
    """R_cw (3, 3), t_cw (3,) of a registered pycolmap image."""
    pose = image.cam_from_world()
    return np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)


def run_dataset(image_dir: Path, images: list[str], work: Path, seed: int | None = None,
                reuse_database: bool = False) -> tuple[dict, dict]:
    """Scene and pose per image, and seconds per stage, for one dataset.

    ``seed`` seeds the mapper (None: pycolmap's default). ``reuse_database`` maps again
    from the database a previous call left in ``work`` (features and matches do not depend
    on the seed), reporting the seconds that call spent on them."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    times_file = work / "feature_matching_seconds.txt"
    timings = {}
    if reuse_database and db.is_file() and times_file.is_file():
        timings["features"], timings["matching"] = map(float, times_file.read_text().split())
    else:
        db.unlink(missing_ok=True)
        start = time.perf_counter()
        pycolmap.extract_features(db, image_dir, image_names=images,
                                  device=pycolmap.Device.cpu)
        timings["features"] = time.perf_counter() - start
        start = time.perf_counter()
        pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
        timings["matching"] = time.perf_counter() - start
        times_file.write_text(f"{timings['features']} {timings['matching']}")
    options = pycolmap.IncrementalPipelineOptions()  # pycolmap's defaults
    if seed is not None:
        options.random_seed = seed
    start = time.perf_counter()
    shutil.rmtree(work / "sparse", ignore_errors=True)
    models = pycolmap.incremental_mapping(db, image_dir, work / "sparse", options)
    timings["mapping"] = time.perf_counter() - start
    result = {}
    ordered = sorted(models.values(), key=lambda m: -m.num_reg_images())
    for k, model in enumerate(ordered):
        for image in model.images.values():
            if image.name in result or not image.has_pose:
                continue
            R, t = cam_from_world(image)
            result[image.name] = (cluster_name(k), R, t)
    return result, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where databases and models go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args(argv)
    work_root = args.work_dir or Path(tempfile.mkdtemp(prefix="pycolmap_baseline_"))
    test_images = list_test_images(args.data_dir)
    predictions, rows = [], []
    wall = time.perf_counter()
    for dataset, group in test_images.groupby("dataset", sort=False):
        images = list(group["image"])
        result, timings = run_dataset(args.data_dir / "test" / dataset, images,
                                      work_root / dataset)
        for image in images:
            scene, R, t = result.get(image, (OUTLIER_SCENE, np.full((3, 3), np.nan),
                                             np.full(3, np.nan)))
            predictions.append(PosePrediction(dataset, image, scene, R, t))
        rows.append({"dataset": dataset, "images": len(images),
                     "registered": len(result), **{f"{k}_s": v for k, v in timings.items()}})
        print(f"{dataset}: {len(result)}/{len(images)} registered, "
              + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), flush=True)
    wall = time.perf_counter() - wall
    submission = build_submission(predictions, test_images)
    path = write_submission(submission, args.out / "pycolmap_baseline_submission.csv", test_images)
    table = pd.DataFrame(rows)
    labels = args.data_dir / "test_labels.csv"
    if labels.is_file():
        report = score_submission(path, labels, args.data_dir / "test_thresholds.csv")
        print(report.table())
        table = table.merge(report.per_dataset[["dataset", "mAA", "clusterness", "score"]],
                            on="dataset")
    print(f"wall time {wall:.1f} s")
    table["wall_s_total"] = wall
    write_csv_atomic(table, args.out / "pycolmap_baseline.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
