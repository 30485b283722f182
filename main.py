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

from config import Config, ConfigError, add_config_arguments, config_from_args, get_config
from src.clustering import ClusterSettings, SpreadScales, cluster_all
from src.demo_data import ensure_data_dir
from src.evaluation import score_submission, score_subset, seen_unseen_summary, true_scenes
from src.geometric import GeometricConf, describe, run_geometric
from src.inference import load_run_model, pose_table, predict
from src.plots import plot_run_results
from src.preprocessing import prepare_training_labels
from src.run_context import RunContext, setup_logging
from src.training import configure_precision, select_strategy, train_model
from src.utils_io import (DataError, build_submission, list_test_images, write_csv_atomic,
                          write_submission)

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
    cfg = resolve_config(args)
    ctx = RunContext.create(cfg, args.stage)
    strategy = select_strategy()
    configure_precision(cfg.mixed_precision, strategy)
    batch_size = cfg.batch_size_per_replica * strategy.num_replicas_in_sync

    with ctx.stage("data"):
        data_dir = ensure_data_dir(cfg)
    with ctx.stage("labels"):
        labels = prepare_training_labels(data_dir / "train_labels.csv",
                                         data_dir / "train_thresholds.csv",
                                         cfg.val_fraction, cfg.seed)
        labels.save(ctx.run_dir)

    if cfg.pipeline in ("geometric", "hybrid"):
        try:
            geometric_conf = GeometricConf.from_config(cfg)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        log.info("geometric pipeline: %s", describe(geometric_conf))

    model = scaler = None
    if cfg.pipeline in ("learned", "hybrid"):
        if args.stage in ("all", "train"):
            with ctx.stage("train"):
                model = train_model(cfg, labels, data_dir, strategy, ctx.run_dir)
            scaler = labels.scaler
        else:
            model, scaler = load_run_model(ctx.run_dir)
    if args.stage == "train":
        return ctx.run_dir

    test_images = list_test_images(data_dir)
    if cfg.pipeline == "learned":
        scales = SpreadScales.from_scene_stats(labels.scene_stats)
        settings = ClusterSettings.from_config(cfg)
        if len(labels.val):
            with ctx.stage("validate"):
                val = predict(model, scaler, labels.val, data_dir / "train", batch_size)
                val_scenes = cluster_all(val.table, val.features, scales, settings)
                report = score_subset(build_submission(val.pose_predictions(val_scenes)),
                                      data_dir / "train_labels.csv",
                                      data_dir / "train_thresholds.csv", labels.val)
                log.info("validation score (held-out views of training scenes):\n%s",
                         report.table())
                write_csv_atomic(report.per_dataset, ctx.run_dir / "score_validation.csv")
        with ctx.stage("infer"):
            test = predict(model, scaler, test_images, data_dir / "test", batch_size)
        with ctx.stage("cluster"):
            scenes = cluster_all(test.table, test.features, scales, settings)
            test.table["scene"] = scenes.to_numpy()
            test.save(ctx.run_dir)
        predictions = test.pose_predictions(scenes)
        table = test.table
    else:
        learned = None
        if cfg.pipeline == "hybrid":
            with ctx.stage("infer"):
                learned = predict(model, scaler, test_images, data_dir / "test", batch_size)
                learned.save(ctx.run_dir)
        with ctx.stage("geometric"):
            predictions, stage_seconds = run_geometric(
                test_images, data_dir / "test", geometric_conf,
                ctx.run_dir / "geometric", cfg.overwrite,
                backbone_features=learned.features if learned else None,
                outlier_prob=learned.table["outlier_prob"].to_numpy() if learned else None,
                outlier_threshold=cfg.outlier_threshold)
            write_csv_atomic(stage_seconds, ctx.run_dir / "timings_geometric.csv")
            table = pose_table(predictions)
            write_csv_atomic(table, ctx.run_dir / "predictions_test.csv")
        scenes = table["scene"]

    with ctx.stage("submission"):
        submission = build_submission(predictions, test_images)
        path = write_submission(submission, ctx.run_dir / "submission.csv", test_images)
        write_submission(submission, Path(cfg.output_dir) / "submission.csv", test_images)
        log.info("wrote %s (%d images in %d datasets, validated)", path, len(submission),
                 submission["dataset"].nunique())
    truth = None
    with ctx.stage("score"):
        test_labels = data_dir / "test_labels.csv"
        if test_labels.is_file():
            report = score_submission(path, test_labels, data_dir / "test_thresholds.csv")
            log.info("test score:\n%s\n%s", report.table(),
                     seen_unseen_summary(report, set(labels.labels["scene"])))
            write_csv_atomic(report.per_dataset, ctx.run_dir / "score_test.csv")
            truth = true_scenes(table, test_labels)
        else:
            log.info("no test labels in %s: the test score is computed by Kaggle", data_dir)
    with ctx.stage("plots"):
        plot_run_results(table, scenes, data_dir / "test", ctx.run_dir / "plots", truth)
    return ctx.run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (DataError, FileNotFoundError, ConfigError, ImportError) as err:
        log.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
