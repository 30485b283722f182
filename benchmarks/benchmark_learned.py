"""Throughput of the learned pipeline on this machine: input pipeline, training, inference.

    python benchmarks/benchmark_learned.py                       # cpu-demo preset, demo data
    python benchmarks/benchmark_learned.py --backbone convnext_tiny --image-size 64
    python benchmarks/benchmark_learned.py --preset gpu --data-dir DIR --batches 50

Run from the repository root. The script PRINTS figures (it asserts nothing about speed):

1. input pipeline images/s (``training_dataset`` with augment=True, iterated alone, no
   model): (a) without cache, i.e. decode + resize + augment every epoch, the cost of a
   first epoch; (b) from the in-memory cache (shuffle + augment only), the cost of every
   later epoch. The pass that fills the cache is reported too.
2. training images/s: ``model.fit`` of the preset's model on the cached training pipeline,
   with the backbone trainable (freeze_ratio 0.0) and frozen (freeze_ratio 1.0), the two
   settings of the curriculum.
3. inference images/s: ``src.learned.inference.predict`` end to end (decode + forward + NumPy), and
   ``model.infer`` forward passes alone on images decoded beforehand.
4. input-pipeline / training throughput ratios and a one-line verdict.
5. the context: strategy, replicas, precision policy, device, TF version, sizes, images.

Every measurement runs a warm-up first (tf.function tracing, first-epoch cache filling,
one untimed epoch); the warm-up seconds are reported separately and never enter images/s.
With a small data set (fewer batches per epoch than ``--batches``) whole epochs are timed,
so that each image counts as often as in training; the whole-table shuffle buffer makes
an uncached epoch decode every image before it yields its first batch, so the uncached
pipeline is always timed over whole epochs.

The table is printed and written to ``outputs/benchmarks/learned_<preset>.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

IMPORT_START = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Same quieting as main.py: TensorFlow's C++ start-up chatter, and Keras' note that fit()
# does not reshuffle tf.data datasets (ours shuffle themselves).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed.*")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from config import DEMO_DATA_DIR, PRESETS, get_config  # noqa: E402
from src.learned.dataset import image_dataset, training_dataset  # noqa: E402
from src.demo_data import ensure_data_dir  # noqa: E402
from src.learned.inference import predict  # noqa: E402
from src.learned.model_architecture import BACKBONES, set_backbone_trainable  # noqa: E402
from src.learned.preprocessing import prepare_training_labels  # noqa: E402
from src.learned.training import (TrainingConf, WarmupCosineDecay, build_model,  # noqa: E402
                                  configure_precision, device_kind, select_strategy)
from src.data_io import write_csv_atomic  # noqa: E402
from src.submission import list_test_images  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - IMPORT_START

# Timed batches per measurement. With the cpu-demo preset (82 training images, 6 batches
# per epoch) that is 10 whole epochs; the whole script then takes about a minute on a
# 2-core CPU.
DEFAULT_BATCHES = 60
# Training steps run before the clock starts when an epoch is longer than --batches
# (otherwise one whole epoch is the warm-up).
WARMUP_STEPS = 3
VERDICT_RATIO = 1.5
OUTPUT_DIR = REPO_ROOT / "outputs" / "benchmarks"


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurement:
    """One timed measurement: ``images`` in ``batches`` took ``seconds`` after a warm-up of
    ``warmup_seconds`` (tracing, cache filling, untimed epochs)."""

    name: str
    images: int
    batches: int
    seconds: float
    warmup_seconds: float
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ms_per_batch(self) -> float:
        return 1000.0 * self.seconds / self.batches if self.batches else float("nan")


def epoch_batch_sizes(n_images: int, batch_size: int) -> list[int]:
    """Sizes of the batches of one epoch (the last one partial, as drop_remainder=False)."""
    full, rest = divmod(n_images, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def timed_plan(n_batches: int, steps_per_epoch: int, whole_epochs: bool = False
               ) -> tuple[int, int]:
    """(warm-up batches, timed batches) for a measurement.

    When an epoch has no more than ``n_batches`` batches (or ``whole_epochs``), one epoch
    warms up and whole epochs are timed (at least ``n_batches`` batches); otherwise
    ``WARMUP_STEPS`` batches warm up and exactly ``n_batches`` are timed.
    """
    if whole_epochs or steps_per_epoch <= n_batches:
        return steps_per_epoch, max(1, math.ceil(n_batches / steps_per_epoch)) * steps_per_epoch
    return min(WARMUP_STEPS, steps_per_epoch), n_batches


def consume(iterator, n_batches: int) -> tuple[int, float]:
    """Pull ``n_batches`` (images, targets) batches; returns (images, seconds)."""
    images = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = next(iterator)
        images += int(batch[0].shape[0])
    return images, time.perf_counter() - start


def bench_pipeline_uncached(rows, image_root, scaler, cfg, batch_size, n_batches
                            ) -> Measurement:
    """(a) decode + resize + augment every epoch (cache=False), whole epochs."""
    start = time.perf_counter()
    ds = training_dataset(rows, image_root, scaler, cfg.image_size, batch_size, seed=cfg.seed,
                          augment=True, cache=False)
    iterator = iter(ds.repeat())
    warm_batches, timed = timed_plan(n_batches, len(epoch_batch_sizes(len(rows), batch_size)),
                                     whole_epochs=True)
    consume(iterator, warm_batches)
    warmup = time.perf_counter() - start
    images, seconds = consume(iterator, timed)
    return Measurement("input pipeline, no cache (decode+resize+augment)", images, timed,
                       seconds, warmup, "cache=False; = a first epoch; warm-up: build + 1 epoch")


def bench_pipeline_cached(rows, image_root, scaler, cfg, batch_size, n_batches
                          ) -> tuple[tf.data.Dataset, Measurement, Measurement]:
    """The cache-filling first pass, then (b) epochs read from the in-memory cache.

    Returns the cached dataset (its cache filled) for the training measurements.
    """
    start = time.perf_counter()
    ds = training_dataset(rows, image_root, scaler, cfg.image_size, batch_size, seed=cfg.seed,
                          augment=True, cache=True)
    build = time.perf_counter() - start
    first_images, first_seconds = consume(iter(ds), len(epoch_batch_sizes(len(rows),
                                                                          batch_size)))
    first = Measurement("input pipeline, first pass filling the cache", first_images,
                        len(epoch_batch_sizes(len(rows), batch_size)), first_seconds, build,
                        "cache=True, epoch 1; warm-up: build (tracing) only")
    iterator = iter(ds.repeat())
    warm_batches, timed = timed_plan(n_batches, len(epoch_batch_sizes(len(rows), batch_size)))
    start = time.perf_counter()
    consume(iterator, warm_batches)
    warmup = build + first_seconds + time.perf_counter() - start
    images, seconds = consume(iterator, timed)
    cached = Measurement("input pipeline, from cache (shuffle+augment)", images, timed,
                         seconds, warmup, "cache=True, epochs 2+; warm-up: fill + 1 epoch")
    return ds, first, cached


class StepTimes(keras.callbacks.Callback):
    """perf_counter() at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def parameter_count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def bench_training(model, ds, cfg, strategy, freeze_ratio: float, n_images: int,
                   batch_size: int, n_batches: int) -> Measurement:
    """``model.fit`` on the cached pipeline; the clock runs from the end of the warm-up
    steps (tracing included there) to the end of the last step."""
    sizes = epoch_batch_sizes(n_images, batch_size)
    warm_batches, timed = timed_plan(n_batches, len(sizes))
    total_steps = warm_batches + timed
    schedule = WarmupCosineDecay(cfg.warmup_initial_lr, cfg.lr_all,
                                 warmup_steps=int(cfg.warmup_fraction * total_steps),
                                 total_steps=total_steps)
    with strategy.scope():
        layers = set_backbone_trainable(model.backbone, freeze_ratio)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule))
    trainable = parameter_count(model.backbone.trainable_weights)
    total = parameter_count(model.backbone.weights)
    timer = StepTimes()
    start = time.perf_counter()
    model.fit(ds.repeat(), epochs=1, steps_per_epoch=total_steps, verbose=0,
              callbacks=[timer])
    warmup = timer.ends[warm_batches - 1] - start
    seconds = timer.ends[-1] - timer.ends[warm_batches - 1]
    # The repeated dataset starts at an epoch boundary, so step i has batch sizes[i % len].
    images = sum(sizes[i % len(sizes)] for i in range(warm_batches, total_steps))
    mode = "trainable" if freeze_ratio == 0.0 else "frozen"
    return Measurement(
        f"training model.fit, backbone {mode}", images, timed, seconds, warmup,
        f"freeze_ratio {freeze_ratio:.1f}: {layers}/{len(model.backbone.layers)} backbone "
        f"layers, {trainable:,}/{total:,} backbone params trainable; XLA {model.jit_compile}")


def bench_predict(model, scaler, test_images, image_root, batch_size, n_batches
                  ) -> Measurement:
    """``src.learned.inference.predict`` end to end: decode (no cache) + forward + NumPy."""
    start = time.perf_counter()
    predict(model, scaler, test_images, image_root, batch_size)  # traces model.infer
    warmup = time.perf_counter() - start
    per_pass = len(epoch_batch_sizes(len(test_images), batch_size))
    passes = max(1, math.ceil(n_batches / per_pass))
    start = time.perf_counter()
    for _ in range(passes):
        predict(model, scaler, test_images, image_root, batch_size)
    seconds = time.perf_counter() - start
    return Measurement("inference predict() (decode+forward)", passes * len(test_images),
                       passes * per_pass, seconds, warmup,
                       f"{passes} pass(es) over the test images; warm-up: 1 pass (tracing)")


def bench_forward(model, test_paths, cfg, batch_size, n_batches) -> Measurement:
    """``model.infer`` alone on test images decoded beforehand."""
    start = time.perf_counter()
    batches = list(image_dataset(test_paths, cfg.image_size, batch_size))

    def run(n: int) -> int:
        images = 0
        for i in range(n):
            batch = batches[i % len(batches)]
            outputs = model.infer(batch)
            np.asarray(outputs["features"])  # make sure the result exists
            images += int(batch.shape[0])
        return images

    run(len(batches))
    warmup = time.perf_counter() - start
    timed = max(1, math.ceil(n_batches / len(batches))) * len(batches)
    start = time.perf_counter()
    images = run(timed)
    seconds = time.perf_counter() - start
    return Measurement("inference model.infer (forward only)", images, timed, seconds, warmup,
                       "images decoded beforehand; warm-up: decode + 1 pass")


# --------------------------------------------------------------------------- context
def cpu_name() -> str:
    from benchmark_geometric import cpu_model  # beside this file

    return cpu_model()


def device_description(strategy) -> str:
    kind = device_kind(strategy)
    if kind == "gpu":
        names = []
        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            names.append(details.get("device_name", device.name))
        return f"GPU: {', '.join(names)}"
    if kind == "tpu":
        return f"TPU: {len(tf.config.list_logical_devices('TPU'))} core(s)"
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical cores)"


def load_average() -> float:
    """1-minute load average (NaN where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --------------------------------------------------------------------------- output
def format_table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Plain-text table, columns padded; columns in ``right`` are right-aligned."""
    widths = [max(len(str(v)) for v in column) for column in zip(headers, *rows)]

    def line(values):
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def ratio_rows(uncached: Measurement, cached: Measurement, trainable: Measurement,
               frozen: Measurement) -> list[tuple[str, float]]:
    return [
        ("from cache / training trainable", cached.images_per_s / trainable.images_per_s),
        ("from cache / training frozen", cached.images_per_s / frozen.images_per_s),
        ("no cache / training trainable", uncached.images_per_s / trainable.images_per_s),
        ("no cache / training frozen", uncached.images_per_s / frozen.images_per_s),
    ]


def verdict(ratios: list[tuple[str, float]]) -> str:
    """One line: is the input pipeline fast enough for the fastest training mode?"""
    steady = min(ratios[:2], key=lambda item: item[1])  # epochs 2+ read from the cache
    first = min(ratios[2:], key=lambda item: item[1])  # the first epoch decodes everything
    if steady[1] > VERDICT_RATIO and first[1] > VERDICT_RATIO:
        return (f"input pipeline is not the bottleneck (lowest ratio {min(steady[1], first[1]):.1f}"
                f" > {VERDICT_RATIO}, measured alone on the same machine)")
    if steady[1] > VERDICT_RATIO:
        return (f"WARNING: only the first (uncached) epoch may be input-bound ({first[0]}: "
                f"{first[1]:.2f} <= {VERDICT_RATIO}); cached epochs are fine ({steady[1]:.1f})")
    return (f"WARNING: the input pipeline may be the bottleneck ({steady[0]}: {steady[1]:.2f} "
            f"<= {VERDICT_RATIO}); consider more parallelism, a file cache or smaller images")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print input-pipeline, training and inference throughput of the learned "
                    "model on this machine (a benchmark, not a test).")
    parser.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS),
                        help="configuration preset (default: cpu-demo)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input size (default: the preset's)")
    parser.add_argument("--backbone", default=None, choices=BACKBONES,
                        help="backbone (default: the preset's); Keras ConvNeXts start from "
                             "random weights, nothing is downloaded")
    parser.add_argument("--batches", type=int, default=DEFAULT_BATCHES,
                        help="timed batches per measurement, rounded up to whole epochs when "
                             f"an epoch is shorter (default: {DEFAULT_BATCHES})")
    parser.add_argument("--data-dir", default=None,
                        help="competition-layout data folder (default: the preset's; for "
                             f"cpu-demo the demo data in {DEMO_DATA_DIR}, generated if "
                             "missing)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    return args


def run(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    load_start = load_average()
    overrides = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.backbone is not None:
        overrides["backbone"] = args.backbone
    if args.data_dir is not None:
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    # Relative paths of the config (the demo data folder) are relative to the repository.
    os.chdir(REPO_ROOT)
    cfg = get_config(args.preset, **overrides)

    strategy = select_strategy()
    policy = configure_precision(cfg.mixed_precision, strategy)
    replicas = strategy.num_replicas_in_sync
    batch_size = cfg.batch_size_per_replica * replicas

    start = time.perf_counter()
    data_dir = ensure_data_dir(cfg)
    labels = prepare_training_labels(data_dir / "train_labels.csv",
                                     data_dir / "train_thresholds.csv", cfg.val_fraction,
                                     cfg.seed)
    test_images = list_test_images(data_dir)
    data_seconds = time.perf_counter() - start
    rows, train_root, test_root = labels.train, data_dir / "train", data_dir / "test"
    test_paths = [test_root / d / i for d, i in zip(test_images["dataset"],
                                                     test_images["image"])]
    print(f"benchmark: preset {cfg.preset}, backbone {cfg.backbone}, {cfg.image_size} px, "
          f"batch {batch_size}, {len(rows)} training / {len(test_images)} test images "
          f"from {data_dir}, {args.batches} timed batches per measurement", flush=True)

    measurements: list[Measurement] = []

    def report(m: Measurement) -> Measurement:
        measurements.append(m)
        print(f"  {m.name}: {m.images_per_s:.1f} images/s ({m.images} images in "
              f"{m.seconds:.2f} s; warm-up {m.warmup_seconds:.2f} s)", flush=True)
        return m

    uncached = report(bench_pipeline_uncached(rows, train_root, labels.scaler, cfg,
                                              batch_size, args.batches))
    train_ds, first, cached = bench_pipeline_cached(rows, train_root, labels.scaler, cfg,
                                                    batch_size, args.batches)
    report(first)
    report(cached)

    keras.utils.set_random_seed(cfg.seed)
    start = time.perf_counter()
    model = build_model(TrainingConf.from_config(cfg), labels.scaler, strategy)
    build_seconds = time.perf_counter() - start
    print(f"  model built in {build_seconds:.1f} s "
          f"({parameter_count(model.weights):,} parameters)", flush=True)
    trainable = report(bench_training(model, train_ds, cfg, strategy, 0.0, len(rows),
                                      batch_size, args.batches))
    frozen = report(bench_training(model, train_ds, cfg, strategy, 1.0, len(rows), batch_size,
                                   args.batches))
    report(bench_predict(model, labels.scaler, test_images, test_root, batch_size,
                         args.batches))
    report(bench_forward(model, test_paths, cfg, batch_size, args.batches))
    ratios = ratio_rows(uncached, cached, trainable, frozen)
    line = verdict(ratios)
    wall = time.perf_counter() - wall_start
    load_end = load_average()

    context = {
        "date": datetime.date.today().isoformat(),
        "preset": cfg.preset,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "global_batch": batch_size,
        "batch_per_replica": cfg.batch_size_per_replica,
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "precision_policy": policy,
        "device": device_description(strategy),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "train_images": len(rows),
        "test_images": len(test_images),
    }
    extra = {
        "data": str(data_dir),
        "model parameters": f"{parameter_count(model.weights):,}",
        "data + labels seconds": f"{data_seconds:.1f}",
        "model build seconds": f"{build_seconds:.1f}",
        "peak RSS MB": f"{peak_rss_mb():.0f}",
        "load average 1 min, start / end": f"{load_start:.2f} / {load_end:.2f} "
                                           f"(this run adds about 1)",
        "import seconds (TF, Keras)": f"{IMPORT_SECONDS:.1f}",
        "benchmark seconds (after imports)": f"{wall:.1f}",
    }
    print("\n" + "=" * 100)
    print("Learned pipeline throughput on this machine")
    width = max(len(k) for k in (*context, *extra))
    for key, value in (*context.items(), *extra.items()):
        print(f"  {key.ljust(width)}  {value}")
    print()
    headers = ["measurement", "images/s", "ms/batch", "batches", "images", "timed s",
               "warm-up s", "notes"]
    print(format_table(headers, [
        [m.name, f"{m.images_per_s:.1f}", f"{m.ms_per_batch:.1f}", m.batches, m.images,
         f"{m.seconds:.2f}", f"{m.warmup_seconds:.2f}", m.note] for m in measurements],
        right={1, 2, 3, 4, 5, 6}))
    print()
    print(format_table(["input pipeline / training (images/s ratio)", "ratio", "> 1.5"],
                       [[name, f"{value:.2f}", "yes" if value > VERDICT_RATIO else "NO"]
                        for name, value in ratios], right={1, 2}))
    print()
    print(f"verdict: {line}")
    print("(the pipeline is measured alone: on a CPU it shares the cores with training, so "
          "the real headroom is smaller)")
    cores = os.cpu_count() or 1
    if max(load_start, load_end - 1.0) > 0.5 * cores:
        print(f"NOTE: other processes were using the CPU (load average {load_start:.2f} at the "
              f"start, {load_end:.2f} at the end, {cores} cores): figures are lower and noisier "
              f"than on an idle machine")

    table = pd.DataFrame(
        [{**context, "measurement": m.name, "images_per_s": round(m.images_per_s, 2),
          "ms_per_batch": round(m.ms_per_batch, 2), "timed_batches": m.batches,
          "timed_images": m.images, "timed_s": round(m.seconds, 3),
          "warmup_s": round(m.warmup_seconds, 3), "ratio": "", "note": m.note}
         for m in measurements]
        + [{**context, "measurement": f"ratio {name}", "images_per_s": "", "ms_per_batch": "",
            "timed_batches": "", "timed_images": "", "timed_s": "", "warmup_s": "",
            "ratio": round(value, 3), "note": ""} for name, value in ratios]
        + [{**context, "measurement": "verdict", "images_per_s": "", "ms_per_batch": "",
            "timed_batches": "", "timed_images": "", "timed_s": "", "warmup_s": "",
            "ratio": "", "note": line}])
    path = write_csv_atomic(table, OUTPUT_DIR / f"learned_{cfg.preset}.csv")
    print(f"wrote {path.relative_to(REPO_ROOT)} ({IMPORT_SECONDS + wall:.1f} s including imports)")
    return table


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
