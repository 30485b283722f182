"""The story of a run: configure, get the data, prepare labels, predict, write, score.

    python main.py                      # demo data, cpu-demo preset (kaggle preset on Kaggle)
    python main.py --data-dir DIR       # competition-layout data
    python main.py --help               # every option

Each stage is one call into ``src/``; the run folder (``outputs/<run>``) receives the config,
the log, the stage times, the label split, the translation scaler and ``submission.csv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from config import add_config_arguments, config_from_args
from src.baselines import single_cluster_identity
from src.demo_data import ensure_data_dir
from src.evaluation import score_submission
from src.preprocessing import prepare_training_labels
from src.run_context import RunContext, setup_logging
from src.utils_io import DataError, build_submission, list_test_images, write_submission

log = logging.getLogger("imc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="IMC 2025: group images into scenes and recover camera poses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser)
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> Path:
    """Run the pipeline; returns the run folder."""
    cfg = config_from_args(parse_args(argv))
    setup_logging()
    ctx = RunContext.create(cfg)

    with ctx.stage("data"):
        data_dir = ensure_data_dir(cfg)
    with ctx.stage("labels"):
        labels = prepare_training_labels(data_dir / "train_labels.csv",
                                         data_dir / "train_thresholds.csv",
                                         cfg.val_fraction, cfg.seed)
        labels.save(ctx.run_dir)
    with ctx.stage("predict"):
        test_images = list_test_images(data_dir)
        predictions = single_cluster_identity(test_images)
    with ctx.stage("submission"):
        submission = build_submission(predictions, sample_submission=test_images)
        path = write_submission(submission, ctx.run_dir / "submission.csv",
                                expected_images=test_images)
        write_submission(submission, Path(cfg.output_dir) / "submission.csv",
                         expected_images=test_images)
        log.info("wrote %s (%d images, validated)", path, len(submission))
    with ctx.stage("score"):
        test_labels = data_dir / "test_labels.csv"
        if test_labels.is_file():
            report = score_submission(path, test_labels, data_dir / "test_thresholds.csv")
            log.info("test score (IMC 2025 metric):\n%s", report.table())
        else:
            log.info("no test labels in %s: the test score is computed by Kaggle", data_dir)
    return ctx.run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (DataError, FileNotFoundError) as err:
        log.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
