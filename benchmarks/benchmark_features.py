"""Local features side by side: SIFT + NN-ratio, ALIKED + LightGlue, DISK + LightGlue and
plain pycolmap, on labelled data in competition layout.

    python benchmarks/benchmark_features.py                                   # demo + realdev
    python benchmarks/benchmark_features.py --data-dir /tmp/realdev_input --variants sift pycolmap
    python benchmarks/benchmark_features.py --learned-keypoints 1024

Run from the repository root. Each variant runs in its own child process (so that its peak
memory is its own: the child's maximum resident set size) with a fresh, empty cache, the
project's default configuration (the ``cpu-demo`` preset, ``pipeline=geometric``) and only the
features/matcher changed (keypoint budgets: the automatic ones of ``src.geometric.pipeline``, or
``--learned-keypoints`` for the learned variants; LightGlue's cost grows with the square of it
on a CPU). ``pycolmap`` is the plain-pycolmap baseline of
``benchmarks/benchmark_pycolmap_baseline.py`` (SIFT, exhaustive matching, incremental mapping).
Printed per data set: score, mAA, clustering, registered images, pairs, seconds per stage,
wall seconds, peak memory (MB), and the 1-minute load average around the run (timings are
only comparable on a quiet machine). The table is written to
``<out>/features_<data set>.csv``. By default the data sets are ``outputs/demo_data`` (made by
``python main.py`` if missing) and ``/tmp/realdev_input`` when present (lay it out with
``python -m src.data_layout ../shared/data/realdev /tmp/realdev_input``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if "--progress" not in sys.argv[1:]:
    os.environ.setdefault("TQDM_DISABLE", "1")

# Before anything imports NumPy, as main.py does (src/numpy_blas.py); the runs it starts
# inherit the outcome.
from src.numpy_blas import load_numpy  # noqa: E402

load_numpy()

import pandas as pd  # noqa: E402

VARIANTS = {
    "sift": dict(features="sift", matcher="nn-ratio"),
    "aliked": dict(features="aliked", matcher="lightglue"),
    "disk": dict(features="disk", matcher="lightglue"),
    "pycolmap": None,
}
LABELS = {"sift": "SIFT + NN-ratio (default on CPU)", "aliked": "ALIKED + LightGlue",
          "disk": "DISK + LightGlue", "pycolmap": "plain pycolmap"}
COLUMNS = ["variant", "status", "score", "mAA", "clustering", "registered", "images", "pairs",
           "features_s", "retrieval_s", "matching_s", "clustering_s", "reconstruction_s",
           "wall_s", "peak_MB", "load1_before", "load1_after"]


def run_one(variant: str, data_dir: Path, learned_keypoints: int, work: Path) -> dict:
    """One variant in this process; its 'all' row as a dict, plus the peak memory."""
    import benchmark_geometric as bg  # beside this file

    from config import get_config
    from src.geometric.pipeline import GeometricConf

    if variant == "pycolmap":
        table = bg.run_baseline(data_dir, work, keep=False)
    else:
        overrides = dict(VARIANTS[variant])
        if overrides["features"] != "sift" and learned_keypoints > 0:
            overrides["max_keypoints"] = learned_keypoints
        conf = GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric",
                                                    **bg.SEQUENTIAL, **overrides))
        table = bg.run_geometric_fresh(data_dir, conf, work, variant, keep=False)
    row = table[table["dataset"] == "all"].iloc[0].to_dict()
    row["peak_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    row["variant"] = variant
    return {k: (None if pd.isna(v) else v) if not isinstance(v, str) else v
            for k, v in row.items()}


def run_in_child(variant: str, data_dir: Path, learned_keypoints: int, work: Path,
                 timeout: float) -> dict:
    """The variant's row; a run that fails or outlasts ``timeout`` seconds is a row too,
    with its status, so that one bad variant does not lose the others."""
    result = work / f"{variant}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--one", variant, "--data-dir", str(data_dir),
               "--learned-keypoints", str(learned_keypoints), "--work-dir", str(work),
               "--result", str(result)]
    try:
        # COLMAP's INFO log would bury the tables
        subprocess.run(command, check=True, timeout=timeout,
                       env={**os.environ, "GLOG_minloglevel": "2"})
    except subprocess.TimeoutExpired:
        return {"variant": variant, "status": f"stopped after {timeout:.0f} s"}
    except subprocess.CalledProcessError as error:
        return {"variant": variant, "status": f"failed (exit {error.returncode})"}
    return {**json.loads(result.read_text()), "status": "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, nargs="*", default=None,
                        help="competition-layout folders with test labels")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--learned-keypoints", type=int, default=0,
                        help="keypoints per image of the learned variants (default 0: the "
                             "configuration's automatic budget for this device)")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds a variant may run before it is stopped and reported "
                             "as such (default 1200)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="features_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.one:  # child process: one variant on one data set
        import logging
        logging.basicConfig(level=logging.WARNING)
        import pycolmap  # noqa: F401  (imported before the clock starts)
        import sklearn.cluster  # noqa: F401
        row = run_one(args.one, args.data_dir[0], args.learned_keypoints, work)
        args.result.write_text(json.dumps(row))
        return 0

    from benchmark_geometric import default_data_dirs, fmt_table  # noqa: E402

    from src.data_io import write_csv_atomic

    import pycolmap
    import torch
    print(f"features benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPU(s), torch {torch.__version__} "
          f"(CUDA {'yes' if torch.cuda.is_available() else 'no'}), pycolmap "
          f"{pycolmap.__version__}; learned variants: "
          f"{args.learned_keypoints or 'automatic'} keypoints",
          flush=True)
    for data_dir in args.data_dir or default_data_dirs():
        rows = []
        for variant in args.variants:
            print(f"{data_dir}: {LABELS[variant]} ...", flush=True)
            rows.append(run_in_child(variant, data_dir, args.learned_keypoints, work,
                                     args.timeout))
        table = pd.DataFrame(rows)
        for column in COLUMNS:
            if column not in table:
                table[column] = float("nan")
        table = table[COLUMNS].rename(columns={"load1_before": "load1_in",
                                               "load1_after": "load1_out"})
        table["variant"] = table["variant"].map(LABELS)
        print(f"\n== {data_dir} ==")
        print(fmt_table(table, {"registered": "{:.0f}", "images": "{:.0f}", "pairs": "{:.0f}",
                                "peak_MB": "{:.0f}", "wall_s": "{:.1f}"}), flush=True)
        name = data_dir.resolve().name
        path = write_csv_atomic(table, args.out / f"features_{name}.csv")
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
