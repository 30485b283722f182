"""The story of a run, top to bottom: one call per stage.

    python main.py                                   # demo data, cpu-demo (kaggle on Kaggle)
    python main.py --data-dir DIR                    # competition-layout data
    python main.py --stage train                     # train only
    python main.py --stage infer --run outputs/RUN   # predict with a trained run
    python main.py --pipeline geometric              # features, matching, pycolmap SfM
    python main.py --pipeline hybrid                 # learned outlier head + features steer it
    python main.py --help                            # every option

The run folder (``outputs/<run>``) receives the config, the log, the time per stage, the
label split, the translation scaler, the models, the training history and its plots, the
predictions and features, the cluster assignment, ``submission.csv`` and result plots.
A run restarted with the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

# TensorFlow's C++ start-up chatter and Keras' note that tf.data datasets are not reshuffled
# by fit() (ours shuffle themselves) would bury the progress of the run.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed.*")

# Before anything imports NumPy: its OpenBLAS on its own kernels where the environment pins
# older builds' (src/numpy_blas.py says why); the libraries loaded after keep the pins.
from src.numpy_blas import describe_blas, load_numpy  # noqa: E402

NUMPY_LOADED = load_numpy()

from config import Config, ConfigError, add_config_arguments, config_from_args, get_config
from src.data_io import DataError
from src.demo_data import ensure_data_dir
from src.evaluation import score_test_set
from src.geometric.pipeline import GeometricConf, describe, predict_geometric
from src.learned.preprocessing import load_training_labels
from src.plots import plot_run_results
from src.run_context import RunContext, setup_logging
from src.submission import list_test_images, test_image_root, write_run_submission

log = logging.getLogger("imc")
STAGES = ("all", "train", "infer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="IMC 2025: group images into scenes and recover camera poses.")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="all: train, infer and score; train: train only; infer: predict "
                             "with the trained model of --run (default: all)")
    parser.add_argument("--run", type=Path, default=None,
                        help="a run folder to resume or infer with; its saved config is the "
                             "base that other options override")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback as well as its one line")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    """The preset and overrides, or, with --run, that run's saved config plus overrides."""
    if args.run is None:
        return config_from_args(args)
    saved_path = args.run / "config.json"
    if not saved_path.is_file():
        raise FileNotFoundError(f"--run {args.run}: no config.json there (not a run folder)")
    saved = json.loads(saved_path.read_text())
    overrides = {k: v for k, v in vars(args).items()
                 if k in saved and k != "preset" and v is not None}
    base = {k: v for k, v in saved.items() if k != "preset"}
    return get_config(saved["preset"], **{**base, **overrides, "output_dir": str(args.run.parent),
                                          "run_name": args.run.name})


def run(argv: list[str] | None = None) -> Path:
    """Run the pipeline; returns the run folder."""
    args = parse_args(argv)
    setup_logging()
    log.info("BLAS: %s (NumPy's: %s)", describe_blas(), NUMPY_LOADED)
    cfg = resolve_config(args)
    ctx = RunContext.create(cfg, args.stage)
    with ctx.stage("data"):
        data_dir = ensure_data_dir(cfg)
    with ctx.stage("labels"):
        labels = load_training_labels(data_dir, cfg.val_fraction, cfg.seed, ctx.run_dir,
                                      required=cfg.pipeline != "geometric")
    if cfg.pipeline in ("geometric", "hybrid"):
        geometric_conf = GeometricConf.from_config(cfg)  # a bad choice fails before training
        log.info("geometric pipeline: %s", describe(geometric_conf))
    if cfg.pipeline in ("learned", "hybrid"):
        learned = learned_pipeline()
        trained = learned.train_or_load_model(cfg, args.stage, labels, data_dir, ctx)
    if args.stage == "train":
        return ctx.run_dir

    test_images, image_root = list_test_images(data_dir), test_image_root(data_dir)
    if cfg.pipeline == "learned":
        predictions, table = learned.predict_learned(trained, cfg, labels, test_images,
                                                     data_dir, ctx)
    else:
        hints = None
        if cfg.pipeline == "hybrid":
            with ctx.stage("infer"):
                hints = learned.learned_hints(trained, test_images, data_dir, ctx.run_dir)
        with ctx.stage("geometric"):
            predictions, table = predict_geometric(test_images, image_root, geometric_conf,
                                                   ctx.run_dir, cfg.overwrite, hints,
                                                   cfg.outlier_threshold)
    with ctx.stage("submission"):
        path = write_run_submission(predictions, test_images, ctx.run_dir, cfg.output_dir)
    with ctx.stage("score"):
        seen_scenes = set(labels.labels["scene"]) if labels else set()
        truth = score_test_set(path, data_dir, seen_scenes, table, ctx.run_dir)
    with ctx.stage("plots"):
        plot_run_results(table, table["scene"], image_root, ctx.run_dir / "plots", truth)
    return ctx.run_dir


def learned_pipeline():
    """The learned pipeline's stages (src.learned.pipeline), imported on first use: it loads
    TensorFlow (3 s), which geometric runs and ``--help`` never need."""
    from src.learned import pipeline
    return pipeline


def main(argv: list[str] | None = None) -> int:
    """Run; a bad input, configuration or file-system fault ends in one line that names the
    file and what to do, exit status 2 (``--debug``: the traceback as well)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        run(argv)
    except (DataError, FileNotFoundError, ConfigError, ImportError, OSError) as err:
        log.error("error: %s", explain_error(err), exc_info=debug)
        return 2
    return 0


def explain_error(err: Exception) -> str:
    """One line for the log: the error's own message, or, for the file-system faults a user
    meets (disk full, read-only folder, another run's lock), what happened where and what
    to do about it."""
    if isinstance(err, BlockingIOError):
        return f"{err} Wait for that run to finish, or give this one --run-name NEW."
    if not isinstance(err, OSError) or isinstance(err, FileNotFoundError):
        return str(err)
    where = err.filename or "the output folder"
    if err.errno == errno.ENOSPC:
        folder = Path(str(where)).parent
        return (f"the disk is full writing {where}: free space where {folder} lives "
                f"(df -h {folder}) or choose another --output-dir")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write {where} ({err.strerror}): choose a writable --output-dir "
                f"(on Kaggle, /kaggle/working)")
    return f"{err.strerror or err} ({where})"


if __name__ == "__main__":
    sys.exit(main())
