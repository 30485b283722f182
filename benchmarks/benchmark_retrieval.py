"""Pair recall of the retrieval options: which global descriptor finds the co-visible pairs.

    python benchmarks/benchmark_retrieval.py                      # demo data + /tmp/realdev_input
    python benchmarks/benchmark_retrieval.py --data-dir /tmp/realdev_input --k 5 10 20
    python benchmarks/benchmark_retrieval.py --options vlad-sift backbone random vlad-aliked
    python benchmarks/benchmark_retrieval.py --options backbone --backbone-weights FILE.h5
    python benchmarks/benchmark_retrieval.py --retrieval-weights /kaggle/input/dinov2/transformers/base/1

Run from the repository root. For every data folder (competition layout with
``test_labels.csv``), every test dataset, every retrieval option and every k, the pairs are
chosen by ``src.geometric.pairs.select_pairs`` with ``PairsConf(top_k=k, exhaustive_below=0)``: retrieval
is forced even on datasets small enough for the pipeline's exhaustive shortcut. The script
PRINTS, per data folder, the pairs selected and the **pair recall** (``src.geometric.pairs.pair_recall``:
the share of ground-truth co-visible pairs, two images of the same labelled scene, outliers
excluded, that the selection contains), pooled over the folder's datasets and per dataset,
the precision (share of the selected pairs that are co-visible) and the seconds spent
computing the global descriptors. Exhaustive matching (recall 1 by definition) is listed
for the pair count. Retrieval options:

- ``vlad-sift``: ``src.geometric.pairs.vlad_descriptors`` over the pipeline's local features
  (``FeatureConf()``: SIFT, RootSIFT descriptors), one row per vocabulary size in
  ``--vlad-words`` (the pipeline uses 32). Seconds: vocabulary fitting and encoding;
  feature extraction is printed apart (the pipeline extracts them for matching anyway).
- ``vlad-aliked``: the same over ALIKED descriptors (``FeatureConf(name="aliked",
  max_keypoints=--aliked-max-keypoints)``); skipped with a note while ``src.geometric.features``
  does not offer ALIKED.
- ``backbone``: the pooled features of a ConvNeXt (``src.learned.model_architecture.build_backbone``,
  ``--backbone`` at ``--image-size`` px, images read by ``src.learned.dataset.image_dataset``), from
  RANDOM weights unless ``--backbone-weights FILE`` gives a local weights file (e.g. Keras'
  ``convnext_tiny_notop.h5``); nothing is downloaded. ``--backbone-model FILE`` uses a
  saved Keras backbone instead, such as a run's ``backbone.keras`` (rows ``backbone-model``;
  random weights give rows ``backbone-random``). Seconds:
  decoding and forward passes (building the model and its first traced call are printed
  apart).
- ``dinov2``: ``src.geometric.retrieval.dinov2_descriptors`` of the DINOv2 model folder
  ``--retrieval-weights DIR`` (Hugging Face layout, read offline; skipped with a note
  without it) at ``--retrieval-image-side`` px, one row ``dinov2``, and one row
  ``vlad+dinov2``: the union of each image's top k by VLAD-SIFT (32 words, the pipeline's)
  and by DINOv2, as ``--retrieval vlad+dinov2`` selects them. Seconds: reading the images
  and forward passes (loading the model and its first call are printed apart); the union
  adds VLAD's seconds.
- ``random``: Gaussian random descriptors through the same top-k selection (so the same
  pair-count structure), mean over ``--random-seeds`` seeds: the floor any descriptor must beat.

Two context rows come with every table: ``exhaustive`` (every pair, recall 1) and
``oracle``: descriptors made from the ground-truth labels (one direction per scene, each
outlier its own direction, plus small noise), the ceiling a top-k selection can reach at
that k (a scene of m images has m(m-1)/2 pairs, k neighbours per image cover at most m·k).

Local features are cached under ``--work-dir`` (default ``outputs/benchmarks/retrieval/``),
one folder per data folder and dataset, and reused by the next run. The table of every
(option, k, dataset) is written to ``<out>/retrieval_recall.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# tqdm reads TQDM_* variables when it is imported (see benchmark_geometric.py).
if "--progress" not in sys.argv[1:]:
    os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from src.geometric.features import FeatureConf, extract_dataset, load_all_features  # noqa: E402
from src.geometric.options import AUTO_KEYPOINTS, DINOV2_IMAGE_SIDE, TORCH_DEVICES  # noqa: E402
from src.geometric.pairs import PairsConf, pair_recall_counts, select_pairs, vlad_descriptors  # noqa: E402
from src.geometric.retrieval import Dinov2Conf, dinov2_descriptors  # noqa: E402
from src.geometric.torch_compat import torch_device  # noqa: E402
from src.data_io import write_csv_atomic  # noqa: E402
from src.submission import list_test_images, read_submission  # noqa: E402

log = logging.getLogger("benchmark_retrieval")

OPTIONS = ("vlad-sift", "vlad-aliked", "backbone", "dinov2", "random")
DEFAULT_OPTIONS = ("vlad-sift", "backbone", "dinov2", "random", "vlad-aliked")
RANDOM_DIM = 256  # random descriptors: wide enough that similarities are nearly independent


def _benchmark_geometric():
    """The sibling script, for its table formatter and load average helper."""
    path = REPO_ROOT / "benchmarks" / "benchmark_geometric.py"
    spec = importlib.util.spec_from_file_location("benchmark_geometric", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- data
def load_datasets(data_dir: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Per test dataset: image names (in ``list_test_images`` order) and image -> scene."""
    labels_path = data_dir / "test_labels.csv"
    labels = read_submission(labels_path)
    test_images = list_test_images(data_dir)
    out = {}
    for dataset, group in test_images.groupby("dataset", sort=False):
        names = list(group["image"])
        rows = labels[labels["dataset"] == dataset]
        scene_of = dict(zip(rows["image"], rows["scene"]))
        missing = [n for n in names if n not in scene_of]
        if missing:
            raise ValueError(f"{labels_path}: no label for test image(s) {dataset}/"
                             f"{missing[:3]}")
        out[dataset] = (names, {n: scene_of[n] for n in names})
    return out


def work_folder(work_dir: Path, data_dir: Path) -> Path:
    """Cache folder of one data folder: its name and a hash of its absolute path."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return work_dir / f"{data_dir.name}-{digest}"


# --------------------------------------------------------------------------- descriptors
def local_descriptors(image_dir: Path, names: list[str], conf: FeatureConf,
                      cache_dir: Path) -> tuple[list[np.ndarray], float]:
    """Each image's local descriptors (through the pipeline's cached extraction) and the
    seconds the extraction took in this call (about 0 when cached)."""
    start = time.perf_counter()
    path = extract_dataset(image_dir, names, conf, cache_dir / f"features-{conf.cache_key()}.h5")
    seconds = time.perf_counter() - start
    features = load_all_features(path)
    return [features[n].descriptors for n in names], seconds


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


class BackboneDescriptors:
    """Pooled backbone features of a list of images, the model built (and traced) once."""

    def __init__(self, name: str, image_size: int, weights: str, model_path: Path | None,
                 seed: int) -> None:
        import keras

        from src.learned.model_architecture import build_backbone

        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        if model_path is not None:
            self.model = keras.models.load_model(model_path, compile=False)
            self.image_size = int(self.model.input_shape[1])
            self.label = f"{model_path} ({self.image_size} px)"
        else:
            self.model = build_backbone(name, image_size, weights)
            self.image_size = image_size
            self.label = (f"{name}, {image_size} px, "
                          f"{'weights ' + weights if weights else 'RANDOM weights'}")
        self.batch_size = 8  # small: the last batch of a dataset is padded to it
        self._forward(np.zeros((1, self.image_size, self.image_size, 3), np.float32))
        self.setup_seconds = time.perf_counter() - start

    def _forward(self, batch) -> np.ndarray:
        # Every batch padded to one shape: a new shape would retrace (and XLA-compile) the
        # model, seconds each on this CPU.
        batch = np.asarray(batch, np.float32)
        padded = np.zeros((self.batch_size, *batch.shape[1:]), np.float32)
        padded[:len(batch)] = batch
        return np.asarray(self.model(padded, training=False), np.float64)[:len(batch)]

    def __call__(self, paths: list[Path]) -> np.ndarray:
        from src.learned.dataset import image_dataset

        batches = [self._forward(batch)
                   for batch in image_dataset(paths, self.image_size, self.batch_size)]
        return np.concatenate(batches).reshape(len(paths), -1)


def aliked_conf(max_keypoints: int) -> FeatureConf | None:
    """ALIKED's FeatureConf, or None (with a printed note) while it is not available."""
    try:
        return FeatureConf(name="aliked", max_keypoints=max_keypoints)
    except (ValueError, TypeError) as error:
        print(f"note: vlad-aliked skipped: FeatureConf(name='aliked') is not available "
              f"yet ({error})")
        return None


def oracle_descriptors(names: list[str], scene_of: dict[str, str], seed: int) -> np.ndarray:
    """(N, N) descriptors from the labels: one axis per scene (each outlier its own), plus
    noise small enough never to cross scenes but enough to break ties at random."""
    from src.submission import OUTLIER_SCENE

    groups = [scene_of[n] if scene_of[n] != OUTLIER_SCENE else f"outlier {n}" for n in names]
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    rng = np.random.default_rng(seed)
    return np.eye(len(names))[[index[g] for g in groups]] + 0.01 * rng.normal(
        size=(len(names), len(names)))


# --------------------------------------------------------------------------- measurement
def measure(names: list[str], scene_of: dict[str, str], descriptors: np.ndarray | None,
            ks: list[int]) -> list[dict]:
    """Pairs and recall counts per k for one dataset and one set of global descriptors;
    ``descriptors`` None: exhaustive (one row, k 0)."""
    rows = []
    for k in (ks if descriptors is not None else [0]):
        conf = PairsConf(top_k=max(k, 1), exhaustive_below=len(names) if k == 0 else 0)
        pairs = select_pairs(names, descriptors, conf)
        found, total = pair_recall_counts(pairs, scene_of)
        rows.append({"k": k, "pairs": len(pairs), "found": found, "gt_pairs": total})
    return rows


def dinov2_conf(args, data_dir: Path) -> Dinov2Conf | None:
    """The DINOv2 option's conf, or None (with a printed note) without --retrieval-weights;
    the model is loaded and run once on one image of ``data_dir`` here, so that the rows
    time the descriptors alone."""
    if "dinov2" not in args.options:
        return None
    if not args.retrieval_weights:
        print("note: dinov2 skipped: no --retrieval-weights DIR (a DINOv2 model folder)")
        return None
    conf = Dinov2Conf(weights=args.retrieval_weights, image_side=args.retrieval_image_side,
                      device=args.torch_device)
    dataset, (names, _) = next(iter(load_datasets(data_dir).items()))
    _, seconds = timed(dinov2_descriptors, data_dir / "test" / dataset, names[:1], conf)
    print(f"dinov2: {conf.weights} at {conf.image_side} px on {torch_device(conf.device)}; loaded "
          f"and first call in {seconds:.1f} s", flush=True)
    return conf


def run_data_dir(data_dir: Path, args, backbone: BackboneDescriptors | None,
                 aliked: FeatureConf | None, dinov2: Dinov2Conf | None = None
                 ) -> pd.DataFrame:
    """One row per (option, k, dataset, seed): pairs, recall counts, seconds."""
    datasets = load_datasets(data_dir)
    cache_root = work_folder(args.work_dir, data_dir)
    rows = []

    def add(option, dataset, measured, seconds, features_s=0.0, seed=0):
        for row in measured:
            rows.append({"data_dir": str(data_dir), "option": option, "dataset": dataset,
                         "images": len(datasets[dataset][0]), "seed": seed, **row,
                         "seconds": seconds, "features_s": features_s})

    for dataset, (names, scene_of) in datasets.items():
        image_dir = data_dir / "test" / dataset
        add("exhaustive", dataset, measure(names, scene_of, None, args.k), 0.0)
        add("oracle", dataset, measure(names, scene_of, oracle_descriptors(names, scene_of,
                                                                           args.seed),
                                       args.k), 0.0)
        feature_sets = []
        if "vlad-sift" in args.options or dinov2 is not None:
            feature_sets.append(("vlad-sift", FeatureConf()))
        if "vlad-aliked" in args.options and aliked is not None:
            feature_sets.append(("vlad-aliked", aliked))
        for option, conf in feature_sets:
            try:
                local, features_s = local_descriptors(image_dir, names, conf,
                                                      cache_root / dataset)
            except ImportError as error:  # a learned extractor whose package is missing
                print(f"note: {option} skipped for {dataset}: {error}")
                continue
            print(f"  {dataset}: {conf.name} features of {len(names)} images "
                  f"({features_s:.1f} s; cache {cache_root / dataset})", flush=True)
            for words in args.vlad_words if option in args.options else []:
                global_desc, seconds = timed(vlad_descriptors, local, n_words=words,
                                             seed=args.seed)
                add(f"{option}-w{words}", dataset, measure(names, scene_of, global_desc,
                                                           args.k), seconds, features_s)
            if option == "vlad-sift" and dinov2 is not None:
                vlad, vlad_s = timed(vlad_descriptors, local, seed=args.seed)  # the pipeline's
                dino, dino_s = timed(dinov2_descriptors, image_dir, names, dinov2)
                add("dinov2", dataset, measure(names, scene_of, dino, args.k), dino_s)
                add("vlad+dinov2", dataset, measure(names, scene_of, [vlad, dino], args.k),
                    vlad_s + dino_s, features_s)
        if backbone is not None:
            global_desc, seconds = timed(backbone, [image_dir / n for n in names])
            add(args.backbone_option, dataset,
                measure(names, scene_of, global_desc, args.k), seconds)
        if "random" in args.options:
            for seed in range(args.random_seeds):
                rng = np.random.default_rng(seed)
                global_desc, seconds = timed(rng.normal, size=(len(names), RANDOM_DIM))
                add("random", dataset, measure(names, scene_of, global_desc, args.k),
                    seconds, seed=seed)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per option and k: pairs, pooled recall (GT pairs found / GT pairs over all datasets),
    precision (GT pairs found / pairs selected: how few pairs are wasted on two scenes or an
    outlier), recall per dataset, seconds; the random option averaged over its seeds."""
    per_seed = table.groupby(["option", "k", "seed"], sort=False).agg(
        pairs=("pairs", "sum"), found=("found", "sum"), gt_pairs=("gt_pairs", "sum"),
        seconds=("seconds", "sum")).reset_index()
    per_seed["recall"] = per_seed["found"] / per_seed["gt_pairs"].replace(0, np.nan)
    per_seed["precision"] = per_seed["found"] / per_seed["pairs"].replace(0, np.nan)
    summary = per_seed.groupby(["option", "k"], sort=False).agg(
        pairs=("pairs", "mean"), gt_pairs=("gt_pairs", "first"), recall=("recall", "mean"),
        precision=("precision", "mean"), seconds=("seconds", "mean")).reset_index()
    per_dataset = table.assign(
        recall=table["found"] / table["gt_pairs"].replace(0, np.nan)).pivot_table(
        index=["option", "k"], columns="dataset", values="recall", aggfunc="mean", sort=False)
    per_dataset.columns = [f"recall {d}" for d in per_dataset.columns]
    summary = summary.merge(per_dataset.reset_index(), on=["option", "k"])
    images = int(table.drop_duplicates("dataset")["images"].sum())
    summary.insert(3, "pairs_per_image", summary["pairs"] / images)
    return summary


def print_summary(data_dir: Path, table: pd.DataFrame, summary: pd.DataFrame, fmt) -> None:
    datasets = table.drop_duplicates("dataset")
    described = ", ".join(f"{d} {n} images / {g} GT pairs" for d, n, g in
                          zip(datasets["dataset"], datasets["images"],
                              table[table["option"] == "exhaustive"]["gt_pairs"]))
    print(f"\n== {data_dir}: pair recall ({described}) ==")
    shown = summary.copy()
    shown["k"] = [("all" if k == 0 else str(k)) for k in shown["k"]]
    shown = shown.rename(columns={"recall": "pair recall"})
    recall_cols = [c for c in shown.columns
                   if c.startswith("recall") or c in ("pair recall", "precision")]
    print(fmt(shown, {**{c: "{:.3f}" for c in recall_cols}, "pairs": "{:.0f}",
                      "pairs_per_image": "{:.1f}", "seconds": "{:.2f}"}))


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, nargs="+", action="extend", default=None,
                        help="competition-layout folder(s) with test_labels.csv (repeatable; "
                             "default: the demo data, and /tmp/realdev_input if present)")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20],
                        help="neighbours retrieved per image (default 5 10 20)")
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(DEFAULT_OPTIONS),
                        help="retrieval options (default: all; vlad-aliked is skipped with a "
                             "note when ALIKED is not available)")
    parser.add_argument("--vlad-words", type=int, nargs="+", default=[16, 32, 64],
                        help="VLAD vocabulary sizes (default 16 32 64; the pipeline uses 32)")
    parser.add_argument("--backbone", default="convnext_tiny",
                        help="backbone for the backbone option (src.learned.model_architecture."
                             "BACKBONES; default convnext_tiny)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="backbone input size in pixels (default 128, CPU-friendly)")
    parser.add_argument("--backbone-weights", default="",
                        help="local weights file for --backbone (default: random weights)")
    parser.add_argument("--backbone-model", type=Path, default=None,
                        help="a saved Keras backbone (e.g. outputs/cpu-demo/backbone.keras) "
                             "to use instead of --backbone")
    parser.add_argument("--retrieval-weights", default="",
                        help="a DINOv2 model folder (config.json + model.safetensors or "
                             "pytorch_model.bin) for the rows dinov2 and vlad+dinov2 "
                             "(default: none, rows skipped)")
    parser.add_argument("--retrieval-image-side", type=int, default=DINOV2_IMAGE_SIDE,
                        help=f"DINOv2 input side in pixels (default {DINOV2_IMAGE_SIDE}, the "
                             "pipeline's)")
    parser.add_argument("--torch-device", default="auto", choices=TORCH_DEVICES,
                        help="device of DINOv2 (default auto: CUDA if present)")
    parser.add_argument("--aliked-max-keypoints", type=int,
                        default=AUTO_KEYPOINTS["learned-cpu"],
                        help="keypoint budget of vlad-aliked (default "
                             f"{AUTO_KEYPOINTS['learned-cpu']}, the pipeline's on a CPU)")
    parser.add_argument("--random-seeds", type=int, default=5,
                        help="seeds the random option is averaged over (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="VLAD k-means and backbone seed")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/benchmarks/retrieval"),
                        help="feature caches (kept and reused)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"),
                        help="where retrieval_recall.csv is written")
    parser.add_argument("--progress", action="store_true",
                        help="show the stages' progress bars (only from the command line)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the stages (INFO)")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.k) or any(w < 1 for w in args.vlad_words):
        parser.error("--k and --vlad-words must be >= 1")
    if args.random_seeds < 1:
        parser.error("--random-seeds must be >= 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    bench = _benchmark_geometric()
    import sklearn.cluster  # noqa: F401  (imported lazily by vlad_descriptors; not timed)
    data_dirs = args.data_dir or bench.default_data_dirs()
    for data_dir in data_dirs:
        if not (data_dir / "test_labels.csv").is_file():
            parser.error(f"{data_dir} has no test_labels.csv (lay it out with "
                         "python -m src.data_layout SRC DST)")

    print(f"retrieval benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"{platform.python_version()}, {os.cpu_count()} CPU(s), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"options {' '.join(args.options)}; k {' '.join(map(str, args.k))}; pairs by "
          f"select_pairs with exhaustive_below=0 (retrieval forced)", flush=True)
    aliked = aliked_conf(args.aliked_max_keypoints) if "vlad-aliked" in args.options else None
    dinov2 = dinov2_conf(args, data_dirs[0])
    backbone = None
    args.backbone_option = "backbone"
    if "backbone" in args.options:
        backbone = BackboneDescriptors(args.backbone, args.image_size, args.backbone_weights,
                                       args.backbone_model, args.seed)
        if args.backbone_model is not None:
            args.backbone_option = "backbone-model"
        elif not args.backbone_weights:
            args.backbone_option = "backbone-random"
        print(f"backbone: {backbone.label}; built and traced in "
              f"{backbone.setup_seconds:.1f} s", flush=True)

    tables = []
    for data_dir in data_dirs:
        print(f"\n{data_dir} (load1 {bench.load1():.2f}) ...", flush=True)
        table = run_data_dir(data_dir, args, backbone, aliked, dinov2)
        print_summary(data_dir, table, summarise(table), bench.fmt_table)
        tables.append(table)
    path = write_csv_atomic(pd.concat(tables, ignore_index=True),
                            args.out / "retrieval_recall.csv")
    print(f"\nwrote {path}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
