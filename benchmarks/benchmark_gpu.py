"""What one GPU gives, in one process and at most about 8 minutes: the geometric pipeline with
ALIKED + LightGlue on real photographs, the learned ``gpu`` preset's throughput, and the peak
GPU memory of each.

    python -m src.data_layout ../shared/data/realdev /tmp/realdev_input
    python -m src.data_layout ../shared/data/realdev2 /tmp/realdev2_input
    timeout 600 python benchmarks/benchmark_gpu.py --data-dir /tmp/realdev_input /tmp/realdev2_input
    python benchmarks/benchmark_gpu.py --smoke       # a CPU, tiny sizes: does the script run?

Run from the repository root. The script PRINTS figures (it asserts nothing about speed):

1. ``geometric``: per ``--data-dir`` (competition layout with test labels), the geometric
   pipeline of the ``gpu`` preset with ALIKED + LightGlue on CUDA (the automatic keypoint
   budget there, fp16) and a fresh cache, through ``benchmark_geometric.run_geometric_fresh``:
   features images/s, matching pairs/s (LightGlue + RANSAC verification), SfM seconds (on the
   CPU), wall seconds, the score, and ``torch.cuda.max_memory_allocated`` over the run. A
   run on the tiny demo data goes first, untimed, so that no folder pays for CUDA's start-up
   and the networks' first calls.
2. ``learned``: the ``gpu`` preset (ConvNeXt-Large, 224 px, batch 16 per replica, mixed
   float16) on the demo data (``--learned-data-dir`` for other data), with the measurements
   of ``benchmark_learned.py``: the tf.data input pipeline alone (decoding every epoch, and
   from the in-memory cache), ``model.fit`` with the backbone trainable, and ``model.infer``
   forward passes, each over ``--batches`` batches after a warm-up reported apart; TF's
   peak GPU memory (``tf.config.experimental.get_memory_info('GPU:0')['peak']``) per
   measurement, reset before each.

A part whose device is missing (no CUDA for torch, no GPU for TensorFlow) is reported as
skipped rather than run on the CPU for an hour; ``--smoke`` runs both on the CPU with tiny
sizes (tiny demo data, 128 keypoints, the ``test`` preset's backbone and image size, 2
batches). Nothing starts after ``--budget-s`` seconds (the rest is reported as skipped), and
the table is rewritten after every row, so a run stopped by ``timeout`` keeps what it
measured. Tables: ``<out>/gpu.csv`` and ``<out>/gpu.md`` (``gpu_smoke.*`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
for path in (REPO_ROOT, BENCHMARKS):  # the project, and the benchmarks beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
if "--progress" not in sys.argv[1:]:
    os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

import benchmark_geometric as bg  # noqa: E402
from config import DEMO_DATA_DIR, DEMO_SIZES, PRESETS, get_config  # noqa: E402
from src.data_io import atomic_path, write_csv_atomic  # noqa: E402
from src.demo_data import DemoSpec, generate_demo_dataset  # noqa: E402
from src.geometric.pipeline import GeometricConf, describe_mapper  # noqa: E402

DEFAULT_DATA_DIRS = [Path("/tmp/realdev_input"), Path("/tmp/realdev2_input")]
DEFAULT_BATCHES = 20
DEFAULT_BUDGET_S = 480.0
PRESET = "gpu"
# --smoke: the tiny demo data with fewer test views (7 test images; LightGlue takes up to a
# second a pair on a loaded 2-core CPU, so pairs are retrieved, not all matched), few
# keypoints, the test preset's model sizes, 2 batches. The same data warms the geometric part
# up on a GPU.
TINY_DEMO = DemoSpec(**{**DEMO_SIZES["tiny"], "test_views_per_scene": 3,
                        "outliers_per_dataset": 1}, seed=3)
SMOKE_KEYPOINTS = 128
SMOKE_BATCHES = 2
SMOKE_MODEL = {k: PRESETS["test"][k] for k in ("backbone", "image_size", "head_units",
                                               "batch_size_per_replica")}
COLUMNS = ["part", "data", "measurement", "value", "unit", "seconds", "warmup_s",
           "peak_gpu_MB", "note"]
MB = 2 ** 20


class Table:
    """The benchmark's rows, printed as they come and rewritten to CSV and markdown after
    each one (a run stopped by ``timeout`` keeps what it measured)."""

    def __init__(self, out: Path, name: str, context: dict[str, str]) -> None:
        self.csv, self.md = out / f"{name}.csv", out / f"{name}.md"
        self.context, self.rows = context, []

    def add(self, part: str, data: str, measurement: str, value: float = math.nan,
            unit: str = "", seconds: float = math.nan, warmup_s: float = math.nan,
            peak_gpu_MB: float = math.nan, note: str = "") -> None:
        row = dict(part=part, data=data, measurement=measurement, value=value, unit=unit,
                   seconds=seconds, warmup_s=warmup_s, peak_gpu_MB=peak_gpu_MB, note=note)
        self.rows.append(row)
        shown = f"{value:.2f} {unit}" if not math.isnan(value) else "-"
        print(f"  {part} | {data} | {measurement}: {shown}{f' ({note})' if note else ''}",
              flush=True)
        self.write()

    def skip(self, part: str, data: str, why: str) -> None:
        self.add(part, data, "skipped", note=why)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def write(self) -> None:
        frame = self.frame()
        write_csv_atomic(frame.assign(**self.context), self.csv)
        lines = [f"- {key}: {value}" for key, value in self.context.items()]
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in frame.itertuples(index=False):
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        with atomic_path(self.md) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value).replace("|", "/")


def over_budget(deadline: float) -> bool:
    return time.perf_counter() > deadline


# --------------------------------------------------------------------------- geometric
def geometric_conf(smoke: bool) -> GeometricConf:
    """ALIKED + LightGlue in the gpu preset: on CUDA with the automatic (CUDA) keypoint
    budget, or, for --smoke, on the CPU with a few keypoints."""
    overrides = dict(pipeline="geometric", features="aliked", matcher="lightglue",
                     torch_device="cpu" if smoke else "cuda")
    if smoke:  # and 3 retrieved neighbours per image instead of all 21 pairs
        overrides.update(max_keypoints=SMOKE_KEYPOINTS, pair_exhaustive_below=0, pair_top_k=3)
    return GeometricConf.from_config(get_config(PRESET, **overrides))


def geometric_part(data_dirs: list[Path], warmup_dir: Path | None, smoke: bool, work: Path,
                   table: Table, deadline: float) -> None:
    """``warmup_dir``: data run through the pipeline first, untimed (None: no warm-up)."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        for data_dir in data_dirs:
            table.skip("geometric", data_dir.name, "torch sees no CUDA GPU (--smoke runs on "
                                                   "a CPU with tiny sizes)")
        return
    conf = geometric_conf(smoke)
    print(f"geometric: {bg.describe_short(conf)} on {conf.features.device}, "
          f"{conf.features.max_image_side} px", flush=True)
    warmup = math.nan
    if warmup_dir is not None:
        print(f"geometric: warm-up on {warmup_dir} ...", flush=True)
        started = time.perf_counter()
        bg.run_geometric_fresh(warmup_dir, conf, work, "warmup", keep=False)
        warmup = time.perf_counter() - started
    for data_dir in data_dirs:
        name = data_dir.name
        if over_budget(deadline):
            table.skip("geometric", name, "over the time budget (--budget-s)")
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"geometric: {data_dir} (load1 {bg.load1():.2f}) ...", flush=True)
        run = bg.run_geometric_fresh(data_dir, conf, work, name, keep=False)
        peak = torch.cuda.max_memory_allocated() / MB if cuda else math.nan
        total = run[run["dataset"] == "all"].iloc[0]
        images, pairs = int(total["images"]), int(total["pairs"])
        table.add("geometric", name, "features (ALIKED)", images / total["features_s"],
                  "images/s", total["features_s"],
                  note=f"{images} images, {conf.features.max_keypoints} keypoints, "
                       f"<= {conf.features.max_image_side} px")
        table.add("geometric", name, "matching (LightGlue + RANSAC)",
                  pairs / total["matching_s"], "pairs/s", total["matching_s"],
                  note=f"{pairs} pairs, {int(total['verified_pairs'])} verified")
        table.add("geometric", name, f"SfM ({describe_mapper(conf.reconstruction)}, CPU)",
                  total["reconstruction_s"], "s", total["reconstruction_s"],
                  note=f"{int(total['registered'])} of {images} images registered")
        table.add("geometric", name, "wall", total["wall_s"], "s", total["wall_s"], warmup,
                  peak, "warm-up: the untimed run first; peak: torch.cuda.max_memory_allocated"
                        " over the run" if cuda else "no CUDA: no GPU memory")
        if "score" in total:
            table.add("geometric", name, "score", total["score"], "0-100",
                      note=f"mAA {total['mAA']:.2f}, clustering {total['clustering']:.2f}")
    if cuda:
        torch.cuda.empty_cache()  # what torch cached is TensorFlow's to use next


# --------------------------------------------------------------------------- learned
def tf_peak_mb(tf) -> float:
    """TensorFlow's peak memory on the first GPU since the last reset (nan without one)."""
    try:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / MB
    except ValueError:  # no GPU
        return math.nan


def tf_reset_peak(tf) -> None:
    try:
        tf.config.experimental.reset_memory_stats("GPU:0")
    except ValueError:
        pass


def learned_part(data_dir: Path | None, smoke: bool, batches: int, table: Table,
                 deadline: float) -> None:
    import benchmark_learned as bl  # imports TensorFlow: only now
    import keras
    import tensorflow as tf

    from src.demo_data import ensure_data_dir
    from src.learned.preprocessing import prepare_training_labels
    from src.learned.training import (TrainingConf, build_model, configure_precision,
                                      device_kind, select_strategy)
    from src.submission import list_test_images

    strategy = select_strategy()  # first: it lets TF's GPU memory grow, leaving torch some
    if device_kind(strategy) != "gpu" and not smoke:
        table.skip("learned", "-", "TensorFlow sees no GPU (--smoke runs on a CPU with tiny "
                                   "sizes)")
        return
    overrides = dict(SMOKE_MODEL) if smoke else {}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    cfg = get_config(PRESET, **overrides)
    policy = configure_precision(cfg.mixed_precision, strategy)
    batch_size = cfg.batch_size_per_replica * strategy.num_replicas_in_sync
    table.context["learned"] = (f"{cfg.backbone}, {cfg.image_size} px, batch {batch_size}, "
                                f"{policy}, {type(strategy).__name__} x "
                                f"{strategy.num_replicas_in_sync}, "
                                f"{bl.device_description(strategy)}, TF {tf.__version__}")
    print(f"learned: {table.context['learned']}", flush=True)

    os.chdir(REPO_ROOT)  # the preset's demo folder is relative to the repository
    data = ensure_data_dir(cfg)
    labels = prepare_training_labels(data / "train_labels.csv", data / "train_thresholds.csv",
                                     cfg.val_fraction, cfg.seed)
    test_images = list_test_images(data)
    rows, train_root, test_root = labels.train, data / "train", data / "test"
    test_paths = [test_root / d / i for d, i in zip(test_images["dataset"], test_images["image"])]
    name = data.name

    def record(*measurements) -> None:
        peak = tf_peak_mb(tf)  # since the reset before this measurement
        for m in measurements:
            table.add("learned", name, m.name, m.images_per_s, "images/s", m.seconds,
                      m.warmup_seconds, peak, f"{m.images} images in {m.batches} batches; "
                                              f"{m.note}")

    def out_of_time(what: str) -> bool:
        if over_budget(deadline):
            table.skip("learned", name, f"over the time budget (--budget-s): no {what}")
            return True
        tf_reset_peak(tf)
        return False

    if out_of_time("input pipeline"):
        return
    record(bl.bench_pipeline_uncached(rows, train_root, labels.scaler, cfg, batch_size,
                                      batches))
    if out_of_time("cached input pipeline"):
        return
    train_ds, first, cached = bl.bench_pipeline_cached(rows, train_root, labels.scaler, cfg,
                                                       batch_size, batches)
    record(first, cached)
    if out_of_time("model"):
        return
    keras.utils.set_random_seed(cfg.seed)
    started = time.perf_counter()
    model = build_model(TrainingConf.from_config(cfg), labels.scaler, strategy)
    table.add("learned", name, "model built", bl.parameter_count(model.weights) / 1e6,
              "M parameters", time.perf_counter() - started, peak_gpu_MB=tf_peak_mb(tf),
              note="random weights: the speed is the same")
    if out_of_time("training"):
        return
    record(bl.bench_training(model, train_ds, cfg, strategy, 0.0, len(rows), batch_size,
                             batches))
    if out_of_time("inference"):
        return
    record(bl.bench_forward(model, test_paths, cfg, batch_size, batches))


# --------------------------------------------------------------------------- main
def device_name() -> str:
    """The GPU torch sees (with its CUDA version), else the CPU's model."""
    import torch

    if torch.cuda.is_available():
        return (f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()} (torch "
                f"{torch.__version__}, CUDA {torch.version.cuda})")
    return f"no CUDA GPU; CPU {bg.cpu_model()} x {os.cpu_count()} (torch {torch.__version__})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, nargs="+", default=None,
                        help="competition-layout folders with test labels for the geometric "
                             "part (default: " + " ".join(map(str, DEFAULT_DATA_DIRS)) +
                             "; with --smoke the tiny demo data)")
    parser.add_argument("--learned-data-dir", type=Path, default=None,
                        help=f"data of the learned part (default: the demo data in "
                             f"{DEMO_DATA_DIR}, generated if missing; with --smoke the tiny "
                             f"demo data)")
    parser.add_argument("--parts", nargs="+", choices=("geometric", "learned"),
                        default=["geometric", "learned"], help="what to measure (default: both)")
    parser.add_argument("--batches", type=int, default=None,
                        help=f"timed batches per learned measurement, rounded up to whole "
                             f"epochs (default {DEFAULT_BATCHES}; --smoke {SMOKE_BATCHES})")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="start nothing after this many seconds; the rest is reported as "
                             f"skipped (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--smoke", action="store_true",
                        help="run on the CPU with tiny sizes: checks the script, measures "
                             "nothing worth keeping")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"),
                        help="where gpu.csv and gpu.md are written")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = SMOKE_BATCHES if args.smoke else DEFAULT_BATCHES
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    if args.data_dir is None and not args.smoke and "geometric" in args.parts:
        args.data_dir = DEFAULT_DATA_DIRS
    for data_dir in args.data_dir or []:
        if not (data_dir / "test").is_dir():
            parser.error(f"{data_dir} has no test/ folder (lay it out with python -m "
                         f"src.data_layout ../shared/data/{data_dir.name.removesuffix('_input')}"
                         f" {data_dir})")
    # resolved now: the learned part works from the repository root
    args.out = args.out.resolve()
    args.data_dir = [d.resolve() for d in args.data_dir or []]
    if args.learned_data_dir is not None:
        args.learned_data_dir = args.learned_data_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    context = {"date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
               "device": device_name(), "python": platform.python_version(),
               "cpu": f"{bg.cpu_model()} x {os.cpu_count()}", "preset": PRESET,
               "smoke": str(args.smoke)}
    table = Table(args.out, "gpu_smoke" if args.smoke else "gpu", context)
    print(f"GPU benchmark, {context['date']}; device: {context['device']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    try:
        tiny = None
        if args.smoke or "geometric" in args.parts:
            # the smoke run's data, and the geometric part's untimed warm-up
            tiny = generate_demo_dataset(work / "tiny_demo", TINY_DEMO)
        if "geometric" in args.parts:
            # the smoke run has nothing to warm up: it measures the tiny data once
            geometric_part(args.data_dir or [tiny], None if args.smoke else tiny, args.smoke,
                           work, table, deadline)
        if "learned" in args.parts:
            if over_budget(deadline):
                table.skip("learned", "-", "over the time budget (--budget-s)")
            else:
                learned_part(args.learned_data_dir or (tiny if args.smoke else None),
                             args.smoke, args.batches, table, deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    context.update(peak_rss_MB=f"{rss:.0f}", total_s=f"{time.perf_counter() - started:.1f}")
    table.write()
    print(f"\n== GPU benchmark ({context['device']}) ==")
    for key, value in context.items():
        print(f"{key}: {value}")
    frame = table.frame()
    print(bg.fmt_table(frame.drop(columns=["note"])))
    for row in frame[frame["measurement"] == "skipped"].itertuples():
        print(f"skipped: {row.part} {row.data}: {row.note}")
    print(f"wrote {table.csv} and {table.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
