"""Speed and scaling of the geometric pipeline, and how it compares with plain pycolmap.

    python benchmarks/benchmark_geometric.py                          # scaling, N = 10 40 160
    python benchmarks/benchmark_geometric.py --sizes 10 40 160 --top-k 10 --exhaustive-below 30
    python benchmarks/benchmark_geometric.py --data-dir /tmp/realdev_input --with-baseline
    python benchmarks/benchmark_geometric.py --seeds 3 --with-baseline \
        --data-dir outputs/demo_data /tmp/realdev_input /tmp/realdev2_input [--set mapper=global]

Run from the repository root. The script PRINTS figures (it asserts nothing about speed):

1. Scaling (``--sizes``; the default when no ``--data-dir`` is given): for each N, a demo
   data set whose one test dataset holds about N images (two scenes of (N-2)/2 views and two
   outliers; generated once and cached under ``<demo-root>/N<k>``) goes through
   ``src.geometric.pipeline.run_geometric`` with a fresh, empty cache folder. Per N: images, image
   pairs matched (counted in the matches cache the run wrote: every pair it matched, none
   cached beforehand), pairs/N (between k/2 and k once N > exhaustive_below, against
   (N-1)/2 when every pair is matched), seconds per stage (features, retrieval, matching,
   clustering, reconstruction; ``other`` = wall minus the stages: loading caches,
   bookkeeping), wall seconds, process CPU seconds (all threads), and the score (mAA,
   clustering, score). A second table gives the growth exponent of each figure between
   consecutive sizes: log(y2/y1) / log(N2/N1), 1 for linear growth, 2 for quadratic.
2. ``--data-dir DIR`` (competition layout with test labels, e.g. realdev laid out with
   ``python -m src.data_layout ../shared/data/realdev /tmp/realdev_input``): the geometric
   pipeline with the project's default configuration (the ``cpu-demo`` preset with
   ``pipeline=geometric``; ``--top-k`` / ``--exhaustive-below`` override it when given) and a
   fresh cache, per dataset and overall. With ``--with-baseline`` the plain-pycolmap baseline
   (``benchmarks/benchmark_pycolmap_baseline.py``, its ``run_dataset``) runs on the same data
   and both are printed side by side with the ratios of wall and CPU times.

3. ``--seeds K --data-dir DIR [DIR ...]``: every folder with K seeds (the config's seed and
   the next K-1; the seed changes RANSAC, the VLAD k-means and the SfM mappers), the
   geometric pipeline with a fresh cache each time and, with ``--with-baseline``, plain
   pycolmap on the same seed (its features and exhaustive matches once per folder, their
   seconds counted in every run). Prints min / median / max score per folder and pipeline,
   the worst per-seed margin and the median wall times; ``--set FIELD=VALUE`` tries another
   configuration (``--top-k`` / ``--exhaustive-below`` count as ``--set pair_top_k=`` /
   ``pair_exhaustive_below=``). Defaults are chosen on the minimum of this table, never on
   one run.

The 1-minute load average is recorded before and after every run: the timings are only
comparable on an otherwise idle machine. Tables are written (atomically) to
``<out>/geometric_scaling.csv`` and ``<out>/geometric_vs_pycolmap.csv``.
Libraries imported lazily by the stages (scikit-learn's k-means, pycolmap) are imported
before the clock starts, so no run pays for them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The stages' progress bars clutter the tables; tqdm reads TQDM_* variables when it is
# imported, so this has to happen before the src imports (--progress keeps the bars).
if "--progress" not in sys.argv[1:]:
    os.environ.setdefault("TQDM_DISABLE", "1")

# Before anything imports NumPy, as main.py does (src/numpy_blas.py): plain pycolmap, loaded
# later in this process tree, keeps the environment's OpenBLAS pins.
from src.numpy_blas import describe_blas, load_numpy  # noqa: E402

NUMPY_LOADED = load_numpy()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from config import get_config  # noqa: E402
from src.demo_data import DemoSpec, generate_demo_dataset  # noqa: E402
from src.evaluation import score_frames  # noqa: E402
from src.geometric.concurrency import helper_cpu_seconds  # noqa: E402
from src.geometric.pipeline import GeometricConf, describe_mapper, run_geometric  # noqa: E402
from src.geometric.matching import load_verified_matches  # noqa: E402
from src.data_io import write_csv_atomic
from src.submission import (OUTLIER_SCENE, PosePrediction, build_submission, list_test_images,
    read_submission)

log = logging.getLogger("benchmark_geometric")

STAGES = ("features", "retrieval", "matching", "clustering", "reconstruction", "escalation")
DEFAULT_SIZES = (10, 40, 160)
BASELINE_SCRIPT = REPO_ROOT / "benchmarks" / "benchmark_pycolmap_baseline.py"
DEFAULT_REALDEV = Path("/tmp/realdev_input")  # python -m src.data_layout ../shared/data/realdev


# --------------------------------------------------------------------------- helpers
def load1() -> float:
    """The 1-minute load average (nan where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def default_data_dirs() -> list[Path]:
    """The demo data (generated as ``python main.py`` would, if missing) and realdev laid out
    as a competition input, if it is there."""
    from config import DEMO_DATA_DIR, get_config
    from src.demo_data import ensure_data_dir

    dirs = [ensure_data_dir(get_config("cpu-demo", data_dir=DEMO_DATA_DIR))]
    if (DEFAULT_REALDEV / "test_labels.csv").is_file():
        dirs.append(DEFAULT_REALDEV)
    else:
        print(f"note: {DEFAULT_REALDEV} not found (python -m src.data_layout "
              f"../shared/data/realdev {DEFAULT_REALDEV}); only the demo data")
    return dirs


def demo_spec_for(n: int, seed: int = 7) -> DemoSpec:
    """A demo spec with one test dataset of about ``n`` images: one scene seen in training and
    one unseen, (n - 2) / 2 views each, and the remaining 2 (or 3) images as outliers.
    Training is kept as small as DemoSpec allows it to be useful (1 scene of 3 views)."""
    views = max(2, (n - 2) // 2)
    return DemoSpec(train_datasets=1, scenes_per_train_dataset=1, train_views_per_scene=3,
                    test_datasets=1, test_seen_scenes=1, test_unseen_scenes=1,
                    test_views_per_scene=views, outliers_per_dataset=max(0, n - 2 * views),
                    seed=seed)


# The datasets run one after the other in this process: the stage seconds, the CPU seconds
# and the peak memory are then this process's and add up (worker processes would overlap the
# stages and keep their CPU time to themselves). --set workers=N times parallel datasets.
SEQUENTIAL = {"workers": 1}


def geometric_conf(top_k: int | None, exhaustive_below: int | None) -> GeometricConf:
    """The project's default geometric configuration, with the given pair settings, its
    datasets one after the other (SEQUENTIAL)."""
    overrides = dict(SEQUENTIAL)
    if top_k is not None:
        overrides["pair_top_k"] = top_k
    if exhaustive_below is not None:
        overrides["pair_exhaustive_below"] = exhaustive_below
    return GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric", **overrides))


def count_pairs(cache_dir: Path, min_inliers: int) -> tuple[int, int]:
    """(pairs matched, pairs with >= min_inliers verified inliers) in a dataset's cache.

    The cache started empty, so every complete pair in it was matched by this run. Pairs
    matched again for scenes redone with more effort (in their ``sfm/`` folders) are not
    counted: their seconds are the ``escalation`` stage's."""
    paths = sorted(cache_dir.glob("matches-*.h5"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one matches cache in {cache_dir}, found {len(paths)}")
    verified = load_verified_matches(paths[0])
    return len(verified), sum(len(v) >= min_inliers for v in verified.values())


def score_predictions(predictions: list[PosePrediction], test_images: pd.DataFrame,
                      data_dir: Path):
    """ScoreReport of the predictions, or None when the data has no test labels."""
    labels = data_dir / "test_labels.csv"
    if not labels.is_file():
        return None
    submission = build_submission(predictions, test_images)
    return score_frames(submission, read_submission(labels),
                        read_submission(data_dir / "test_thresholds.csv"),
                        names=("predictions", str(labels),
                               str(data_dir / "test_thresholds.csv")))


def registered(predictions: list[PosePrediction]) -> dict[str, tuple[int, int]]:
    """Per dataset: (images with a pose (finite rotation), predicted clusters)."""
    posed: dict[str, int] = {}
    clusters: dict[str, set[str]] = {}
    for p in predictions:
        posed.setdefault(p.dataset, 0)
        clusters.setdefault(p.dataset, set())
        if p.scene != OUTLIER_SCENE:
            clusters[p.dataset].add(p.scene)
            posed[p.dataset] += int(np.all(np.isfinite(p.R_cw)))
    return {d: (posed[d], len(clusters[d])) for d in posed}


def fmt_table(frame: pd.DataFrame, floats: dict[str, str] | None = None,
              default_float: str = "{:.2f}") -> str:
    """Aligned text table: floats formatted per column, NaN shown as '-'."""
    floats = floats or {}
    shown = frame.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            pattern = floats.get(col, default_float)
            shown[col] = shown[col].map(lambda v, p=pattern: "-" if pd.isna(v) else p.format(v))
    return shown.to_string(index=False)


# --------------------------------------------------------------------------- geometric runs
def with_totals(table: pd.DataFrame, sum_columns: list[str], stage_columns: list[str],
                report, wall: float, cpu: float, load_before: float,
                load_after: float) -> pd.DataFrame:
    """Per-dataset scores, an ``all`` row (sums, overall scores), and run-level columns
    (wall, CPU, wall not spent in the stages, load averages) on the ``all`` row."""
    table = table.copy()
    if report is not None:
        scores = report.per_dataset.set_index("dataset")
        for ours, theirs in (("mAA", "mAA"), ("clustering", "clusterness"), ("score", "score")):
            table[ours] = [float(scores.loc[d, theirs]) for d in table["dataset"]]
    total = {"dataset": "all", **{c: table[c].sum() for c in sum_columns}}
    if report is not None:
        total.update(mAA=report.mAA, clustering=report.clusterness, score=report.score,
                     scene_mAA=scene_maa(report))
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    is_total = table["dataset"] == "all"
    table["wall_s"] = np.where(is_total, wall, np.nan)
    table["other_s"] = np.where(is_total, wall - table[stage_columns].sum(axis=1), np.nan)
    table["cpu_s"] = np.where(is_total, cpu, np.nan)
    table["load1_before"], table["load1_after"] = load_before, load_after
    return table


def scene_maa(report) -> float:
    """The mean of the scenes' own mAA (0-100; a scene left in `outliers` counts 0). The
    leaderboard's dataset mAA pools cameras and keeps a scene's 3-camera deduction when the
    whole scene is left in `outliers` (src/evaluation.py), so on scenes of a few photos a
    dataset can score over 100 by losing a scene; this figure cannot."""
    scenes = report.per_scene
    return float(scenes["mAA"].mean()) if len(scenes) else float("nan")


def run_geometric_fresh(data_dir: Path, conf: GeometricConf, work_root: Path, label: str,
                        keep: bool) -> pd.DataFrame:
    """Run the geometric pipeline on every test dataset of ``data_dir`` with an empty cache;
    one row per dataset plus an ``all`` row: images, pairs, seconds per stage, wall, score."""
    test_images = list_test_images(data_dir)
    cache_root = Path(tempfile.mkdtemp(prefix=f"{label}_", dir=work_root))
    load_before = load1()
    # the CPU time of the SfM helper process counts as the pipeline's (concurrency.in_helper)
    start, cpu_start = time.perf_counter(), time.process_time() + helper_cpu_seconds()
    predictions, timings, _ = run_geometric(test_images, data_dir / "test", conf, cache_root,
                                         overwrite=True)
    wall = time.perf_counter() - start
    cpu = time.process_time() + helper_cpu_seconds() - cpu_start
    load_after = load1()
    report = score_predictions(predictions, test_images, data_dir)
    n_registered = registered(predictions)
    rows = []
    for rec in timings.to_dict("records"):
        dataset = rec["dataset"]
        pairs, verified = count_pairs(cache_root / dataset, conf.graph.min_inliers)
        rows.append({"dataset": dataset, "images": int(rec["images"]),
                     "registered": n_registered.get(dataset, (0, 0))[0],
                     "clusters": n_registered.get(dataset, (0, 0))[1], "pairs": pairs,
                     "verified_pairs": verified,
                     **{f"{s}_s": float(rec.get(s, 0.0)) for s in STAGES}})
    stage_columns = [f"{s}_s" for s in STAGES]
    table = with_totals(pd.DataFrame(rows), ["images", "registered", "clusters", "pairs",
                                             "verified_pairs", *stage_columns],
                        stage_columns, report, wall, cpu, load_before, load_after)
    if not keep:
        shutil.rmtree(cache_root, ignore_errors=True)
    else:
        log.warning("cache of %s kept in %s", label, cache_root)
    return table


def growth_exponents(scaling: pd.DataFrame) -> pd.DataFrame:
    """log(y2/y1) / log(N2/N1) between consecutive sizes, for pairs and every timing."""
    columns = ["pairs", *[f"{s}_s" for s in STAGES], "wall_s"]
    rows = []
    ordered = scaling.sort_values("images").reset_index(drop=True)
    for a, b in zip(ordered.index[:-1], ordered.index[1:]):
        n1, n2 = ordered.loc[a, "images"], ordered.loc[b, "images"]
        row = {"from_N": int(n1), "to_N": int(n2)}
        for col in columns:
            y1, y2 = float(ordered.loc[a, col]), float(ordered.loc[b, col])
            row[col.removesuffix("_s")] = (math.log(y2 / y1) / math.log(n2 / n1)
                                           if y1 > 0 and y2 > 0 and n2 != n1 else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_benchmark(args, conf: GeometricConf, work_root: Path) -> pd.DataFrame:
    rows = []
    for n in args.sizes:
        spec = demo_spec_for(n)
        started = time.perf_counter()
        data_dir = generate_demo_dataset(args.demo_root / f"N{n}", spec)
        gen_s = time.perf_counter() - started
        images = len(list_test_images(data_dir))
        print(f"N={n}: demo data in {data_dir} ({images} test images; ready in {gen_s:.1f} s); "
              f"running the geometric pipeline (load1 {load1():.2f}) ...", flush=True)
        table = run_geometric_fresh(data_dir, conf, work_root, f"scaling_N{n}",
                                    args.keep_work)
        row = table[table["dataset"] == "all"].iloc[0].to_dict()
        row.pop("dataset")
        n_img = int(row["images"])
        row = {"N": n, **row}
        row["exhaustive_pairs"] = n_img * (n_img - 1) // 2
        row["pairs_per_N"] = row["pairs"] / n_img
        row["mode"] = "exhaustive" if n_img <= conf.pairs.exhaustive_below else "retrieval"
        row["matching_ms_per_pair"] = 1000 * row["matching_s"] / max(row["pairs"], 1)
        row["wall_s_per_image"] = row["wall_s"] / n_img
        rows.append(row)
        print(f"  {n_img} images, {row['pairs']} pairs ({row['mode']}), wall "
              f"{row['wall_s']:.1f} s, score {row.get('score', float('nan')):.2f}", flush=True)
    return pd.DataFrame(rows)


def print_scaling(scaling: pd.DataFrame, conf: GeometricConf) -> None:
    k, e = conf.pairs.top_k, conf.pairs.exhaustive_below
    print(f"\n== Scaling of the geometric pipeline (top_k={k}, exhaustive_below={e}) ==")
    shown = scaling[["N", "images", "mode", "pairs", "exhaustive_pairs", "pairs_per_N",
                     "verified_pairs", "registered", "clusters"]].copy()
    print(fmt_table(shown, {"pairs_per_N": "{:.1f}"}))
    print(f"(retrieval keeps each image's {k} nearest neighbours: between {k / 2:g}·N and "
          f"{k}·N unordered pairs once N > {e}; exhaustive is N(N-1)/2)")
    print("\nseconds per stage (other = wall - stages: cache loading, bookkeeping; cpu = "
          "process CPU time, all threads)")
    cols = ["N", "images", *[f"{s}_s" for s in STAGES], "other_s", "wall_s", "cpu_s",
            "wall_s_per_image", "matching_ms_per_pair", "load1_before", "load1_after"]
    print(fmt_table(scaling[cols], {"matching_ms_per_pair": "{:.1f}",
                                    "wall_s_per_image": "{:.3f}"}))
    if "score" in scaling:
        print("\nscore (0-100)")
        print(fmt_table(scaling[["N", "images", "registered", "clusters", "mAA", "clustering",
                                 "score"]]))
    if len(scaling) > 1:
        print("\ngrowth exponent between consecutive sizes: log(y2/y1)/log(N2/N1) "
              "(1 = linear in N, 2 = quadratic)")
        print(fmt_table(growth_exponents(scaling)))


# --------------------------------------------------------------------------- baseline
def load_baseline_module():
    spec = importlib.util.spec_from_file_location("benchmark_pycolmap_baseline", BASELINE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_baseline(data_dir: Path, work_root: Path, keep: bool, seed: int | None = None,
                 work: Path | None = None) -> pd.DataFrame:
    """The plain-pycolmap baseline (its own run_dataset) per dataset plus an ``all`` row.

    ``seed`` seeds its mapper; a ``work`` folder that an earlier call filled is reused for
    features and matches (they do not depend on the seed) and their recorded seconds are
    counted again in this run's wall and stage times."""
    import pycolmap

    baseline = load_baseline_module()
    test_images = list_test_images(data_dir)
    reuse = work is not None
    pycolmap.logging.minloglevel = max(pycolmap.logging.minloglevel, 1)  # warnings and up
    work = work or Path(tempfile.mkdtemp(prefix="pycolmap_baseline_", dir=work_root))
    predictions, rows = [], []
    reused_seconds = 0.0
    load_before = load1()
    start, cpu_start = time.perf_counter(), time.process_time()
    for dataset, group in test_images.groupby("dataset", sort=False):
        images = list(group["image"])
        had_database = (work / dataset / "database.db").is_file()
        result, timings = baseline.run_dataset(data_dir / "test" / dataset, images,
                                               work / dataset, seed=seed,
                                               reuse_database=reuse)
        if reuse and had_database:
            reused_seconds += timings.get("features", 0.0) + timings.get("matching", 0.0)
        for image in images:
            scene, R, t = result.get(image, (OUTLIER_SCENE, np.full((3, 3), np.nan),
                                             np.full(3, np.nan)))
            predictions.append(PosePrediction(dataset, image, scene, R, t))
        rows.append({"dataset": dataset, "images": len(images), "registered": len(result),
                     "clusters": len({scene for scene, _, _ in result.values()}),
                     "pairs": len(images) * (len(images) - 1) // 2,
                     "features_s": timings.get("features", 0.0),
                     "matching_s": timings.get("matching", 0.0),
                     "reconstruction_s": timings.get("mapping", 0.0)})
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    wall += reused_seconds
    load_after = load1()
    report = score_predictions(predictions, test_images, data_dir)
    stage_columns = ["features_s", "matching_s", "reconstruction_s"]
    table = with_totals(pd.DataFrame(rows), ["images", "registered", "clusters", "pairs",
                                             *stage_columns],
                        stage_columns, report, wall, cpu, load_before, load_after)
    if not keep and not reuse:
        shutil.rmtree(work, ignore_errors=True)
    return table


def data_dir_benchmark(args, conf: GeometricConf, work_root: Path) -> pd.DataFrame:
    data_dir = args.data_dir
    print(f"\n{data_dir}: geometric pipeline, default configuration, fresh cache "
          f"(load1 {load1():.2f}) ...", flush=True)
    geo = run_geometric_fresh(data_dir, conf, work_root, "data_dir", args.keep_work)
    geo.insert(0, "pipeline", "geometric")
    tables = [geo]
    if args.with_baseline:
        print(f"{data_dir}: plain pycolmap baseline (load1 {load1():.2f}) ...", flush=True)
        base = run_baseline(data_dir, work_root, args.keep_work)
        base.insert(0, "pipeline", "pycolmap")
        tables.append(base)
    table = pd.concat(tables, ignore_index=True)
    for col in ("retrieval_s", "clustering_s", "verified_pairs"):
        if col not in table:
            table[col] = np.nan
    cols = ["pipeline", "dataset", "images", "registered", "clusters", "pairs", "verified_pairs",
            *[f"{s}_s" for s in STAGES], "other_s", "wall_s", "cpu_s",
            *[c for c in ("mAA", "clustering", "score") if c in table],
            "load1_before", "load1_after"]
    table = table[cols]
    print(f"\n== {data_dir}: per dataset (geometric: top_k={conf.pairs.top_k}, "
          f"exhaustive_below={conf.pairs.exhaustive_below}, sfm_threads="
          f"{conf.reconstruction.num_threads}; pycolmap: exhaustive, default threads) ==")
    print(fmt_table(table.drop(columns=["load1_before", "load1_after"]),
                    {"verified_pairs": "{:.0f}"}))
    if args.with_baseline:
        g = geo[geo["dataset"] == "all"].iloc[0]
        b = base[base["dataset"] == "all"].iloc[0]
        metrics = [m for m in ("score", "mAA", "clustering") if m in g]
        side = pd.DataFrame({
            "metric": [*metrics, "registered images", "clusters", "pairs matched",
                       "wall seconds", "CPU seconds", "load1 before", "load1 after"],
            "geometric": [*(g[m] for m in metrics), g["registered"], g["clusters"], g["pairs"],
                          g["wall_s"], g["cpu_s"], g["load1_before"], g["load1_after"]],
            "pycolmap": [*(b[m] for m in metrics), b["registered"], b["clusters"], b["pairs"],
                         b["wall_s"], b["cpu_s"], b["load1_before"], b["load1_after"]],
        })
        counts = side["metric"].isin(["registered images", "clusters", "pairs matched"])
        for col in ("geometric", "pycolmap"):
            side[col] = [f"{float(v):.0f}" if is_count else f"{float(v):.2f}"
                         for v, is_count in zip(side[col], counts)]
        print("\n== side by side (all datasets) ==")
        print(fmt_table(side))
        ratio = b["wall_s"] / g["wall_s"]
        cpu_ratio = b["cpu_s"] / g["cpu_s"]
        print(f"wall time ratio pycolmap / geometric = {ratio:.2f} "
              f"({'geometric faster' if ratio > 1 else 'pycolmap faster'}); CPU time ratio "
              f"{cpu_ratio:.2f} (process time of all threads, and of the geometric SfM's "
              f"helper process; on a loaded machine both figures inflate)")
        table["wall_ratio_pycolmap_over_geometric"] = ratio
        table["cpu_ratio_pycolmap_over_geometric"] = cpu_ratio
    return table


# --------------------------------------------------------------------------- seeds
def cpu_model() -> str:
    """The processor's model name (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_overrides(pairs: list[str]) -> dict:
    """``FIELD=VALUE`` strings -> Config overrides, each value of its field's type."""
    from dataclasses import fields

    from config import Config
    kinds = {f.name: type(f.default) for f in fields(Config)}
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if name not in kinds or not _:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a Config field")
        kind = kinds[name]
        overrides[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return overrides


def seeded_overrides(set_pairs: list[str], top_k: int | None = None,
                     exhaustive_below: int | None = None) -> dict:
    """The Config overrides of the seeded runs: ``--set FIELD=VALUE`` with ``--top-k`` and
    ``--exhaustive-below`` as the pair fields they stand for (SystemExit when both name one
    field)."""
    overrides = parse_overrides(set_pairs)
    for field, value, flag in (("pair_top_k", top_k, "--top-k"),
                               ("pair_exhaustive_below", exhaustive_below,
                                "--exhaustive-below")):
        if value is None:
            continue
        if field in overrides:
            raise SystemExit(f"{flag} {value} and --set {field}={overrides[field]} both set "
                             f"{field}: give one")
        overrides[field] = value
    return overrides


def seeded_conf(seed: int, overrides: dict) -> GeometricConf:
    """The project's default geometric configuration with this seed and ``overrides``, its
    datasets one after the other unless ``overrides`` say otherwise (SEQUENTIAL)."""
    return GeometricConf.from_config(get_config("cpu-demo", pipeline="geometric", seed=seed,
                                                **{**SEQUENTIAL, **overrides}))


def summary_row(table: pd.DataFrame) -> dict:
    """The ``all`` row of a run table as the figures the seeds table keeps."""
    row = table[table["dataset"] == "all"].iloc[0]
    keep = ("score", "mAA", "clustering", "scene_mAA", "registered", "clusters", "wall_s",
            "cpu_s", "load1_before", "load1_after")
    return {k: float(row[k]) for k in keep if k in row}


def seeds_benchmark(args, work_root: Path) -> pd.DataFrame:
    """Every data folder x every seed: the geometric pipeline with a fresh cache and, with
    ``--with-baseline``, plain pycolmap (features and matches once per folder, mapping per
    seed), one after the other in this process. One row per run."""
    overrides = seeded_overrides(args.set, args.top_k, args.exhaustive_below)
    rows = []
    for data_dir in args.data_dir:
        baseline_work = Path(tempfile.mkdtemp(prefix="pycolmap_seeds_", dir=work_root))
        for seed in args.seed_values:
            conf = seeded_conf(seed, overrides)
            print(f"{data_dir.name}, seed {seed}: geometric ({describe_short(conf)}), load1 "
                  f"{load1():.2f} ...", flush=True)
            table = run_geometric_fresh(data_dir, conf, work_root, f"seed{seed}",
                                        args.keep_work)
            rows.append({"data": data_dir.name, "pipeline": "geometric", "seed": seed,
                         **summary_row(table)})
            print(f"  score {rows[-1].get('score', float('nan')):.2f} in "
                  f"{rows[-1]['wall_s']:.1f} s", flush=True)
            if args.with_baseline:
                print(f"{data_dir.name}, seed {seed}: plain pycolmap, load1 {load1():.2f} ...",
                      flush=True)
                table = run_baseline(data_dir, work_root, args.keep_work, seed=seed,
                                     work=baseline_work)
                rows.append({"data": data_dir.name, "pipeline": "pycolmap", "seed": seed,
                             **summary_row(table)})
                print(f"  score {rows[-1].get('score', float('nan')):.2f} in "
                      f"{rows[-1]['wall_s']:.1f} s", flush=True)
        if not args.keep_work:
            shutil.rmtree(baseline_work, ignore_errors=True)
    return pd.DataFrame(rows)


def describe_short(conf: GeometricConf) -> str:
    return (f"{conf.features.name} {conf.features.max_keypoints} kp, {conf.matching.matcher}, "
            f"{describe_mapper(conf.reconstruction)}")


def seeds_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per data folder: min / median / max score of each pipeline over the seeds, its
    lowest mean scene mAA (scene_maa), the worst per-seed margin (geometric - pycolmap on the
    same seed) and the median wall times."""
    rows = []
    for data, group in runs.groupby("data", sort=False):
        row = {"data": data, "seeds": int(group["seed"].nunique())}
        for pipeline, runs_of in group.groupby("pipeline", sort=False):
            scores = runs_of["score"]
            row.update({f"{pipeline}_min": scores.min(), f"{pipeline}_median": scores.median(),
                        f"{pipeline}_max": scores.max(),
                        f"{pipeline}_wall_s": runs_of["wall_s"].median()})
            if "scene_mAA" in runs_of:
                row[f"{pipeline}_scene_mAA"] = runs_of["scene_mAA"].min()
        if "pycolmap_min" in row:
            paired = group.pivot(index="seed", columns="pipeline", values="score")
            row["worst_margin"] = float((paired["geometric"] - paired["pycolmap"]).min())
            row["wall_ratio"] = row["geometric_wall_s"] / row["pycolmap_wall_s"]
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="test images per demo dataset for the scaling table (default "
                             f"{' '.join(map(str, DEFAULT_SIZES))} when no --data-dir is "
                             "given, none otherwise)")
    parser.add_argument("--data-dir", type=Path, nargs="+", default=None,
                        help="competition-layout folder(s) with test labels to time and score "
                             "(several only with --seeds)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="run every --data-dir with this many seeds (the config's seed, "
                             "then +1, ...: RANSAC, VLAD k-means and the mappers) and print "
                             "min / median / max score per folder beside plain pycolmap's")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a Config field for the geometric runs of --seeds, e.g. "
                             "--set mapper=incremental (repeatable)")
    parser.add_argument("--with-baseline", action="store_true",
                        help="also run the plain-pycolmap baseline on --data-dir")
    parser.add_argument("--top-k", type=int, default=None,
                        help="retrieved neighbours per image (default: the configuration's)")
    parser.add_argument("--exhaustive-below", type=int, default=None,
                        help="exhaustive matching up to this many images (default: the "
                             "configuration's)")
    parser.add_argument("--demo-root", type=Path,
                        default=Path("outputs/benchmarks/geometric_data"),
                        help="where the scaling demo data sets are generated and kept")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="parent of the fresh cache folders (default: a temporary folder)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the cache folders of the runs (default: removed)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"),
                        help="where the CSV tables are written")
    parser.add_argument("--progress", action="store_true",
                        help="show the stages' progress bars (only from the command line)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the stages (INFO)")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [] if args.data_dir else list(DEFAULT_SIZES)
    if any(n < 2 for n in args.sizes):
        parser.error("--sizes must be >= 2")
    if args.with_baseline and not args.data_dir:
        parser.error("--with-baseline needs --data-dir")
    for data_dir in args.data_dir or []:
        if not (data_dir / "test").is_dir():
            parser.error(f"{data_dir} has no test/ folder (lay it out with "
                         "python -m src.data_layout SRC DST)")
    if args.seeds is None and args.data_dir and len(args.data_dir) > 1:
        parser.error("several --data-dir folders need --seeds")
    if args.seeds is not None and (args.seeds < 1 or not args.data_dir):
        parser.error("--seeds needs a positive count and --data-dir")
    if args.seeds is not None:
        first = get_config("cpu-demo").seed
        args.seed_values = list(range(first, first + args.seeds))
    elif args.data_dir:
        args.data_dir = args.data_dir[0]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    # Lazily imported by the stages; imported here so that no timed run pays for them.
    import pycolmap  # noqa: F401
    import sklearn.cluster  # noqa: F401

    conf = geometric_conf(args.top_k, args.exhaustive_below)
    if args.seeds is not None:  # what the seeded runs use, --set included
        conf = seeded_conf(args.seed_values[0],
                           seeded_overrides(args.set, args.top_k, args.exhaustive_below))
    print(f"geometric benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"{platform.python_version()}, {os.cpu_count()} x {cpu_model()}, pycolmap "
          f"{pycolmap.__version__}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"BLAS: {describe_blas()} (NumPy's: {NUMPY_LOADED})")
    print(f"configuration: features {conf.features.name} {conf.features.max_keypoints} kp / "
          f"{conf.features.max_image_side} px, pairs top_k={conf.pairs.top_k} "
          f"exhaustive_below={conf.pairs.exhaustive_below}, retrieval {conf.retrieval}, "
          f"min inliers {conf.matching.min_inliers}/{conf.graph.min_inliers}, "
          f"sfm threads {conf.reconstruction.num_threads}, {describe_mapper(conf.reconstruction)}, "
          f"{conf.reconstruction.pair_geometry} pair geometry", flush=True)

    made_work = args.work_dir is None
    work_root = Path(tempfile.mkdtemp(prefix="geometric_bench_")) if made_work else args.work_dir
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        if args.sizes:
            scaling = scaling_benchmark(args, conf, work_root)
            print_scaling(scaling, conf)
            path = write_csv_atomic(scaling.assign(top_k=conf.pairs.top_k,
                                                   exhaustive_below=conf.pairs.exhaustive_below),
                                    args.out / "geometric_scaling.csv")
            print(f"wrote {path}")
        if args.seeds is not None:
            runs = seeds_benchmark(args, work_root)
            path = write_csv_atomic(runs, args.out / "geometric_seeds_runs.csv")
            summary = seeds_summary(runs)
            print(f"\n== score over seeds {args.seed_values} (min / median / max), wall medians"
                  f"{'; overrides ' + ' '.join(args.set) if args.set else ''} ==")
            print(fmt_table(summary, {"seeds": "{:.0f}", "wall_ratio": "{:.2f}",
                                      "geometric_wall_s": "{:.1f}", "pycolmap_wall_s": "{:.1f}"}))
            print(f"(worst_margin: the lowest geometric - pycolmap difference on one seed; "
                  f"wall_ratio: geometric / pycolmap median wall time; *_scene_mAA: the "
                  f"lowest mean of the scenes' own mAA over the seeds)\nwrote {path} and "
                  f"{write_csv_atomic(summary, args.out / 'geometric_seeds.csv')}")
        elif args.data_dir:
            table = data_dir_benchmark(args, conf, work_root)
            table.insert(1, "data_dir", str(args.data_dir))
            path = write_csv_atomic(table, args.out / "geometric_vs_pycolmap.csv")
            print(f"wrote {path}")
    finally:
        if made_work and not args.keep_work:
            shutil.rmtree(work_root, ignore_errors=True)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
