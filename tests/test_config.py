"""The typed configuration, its presets and the command line built from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import config


def parse(argv):
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser)
    return config.config_from_args(parser.parse_args(argv))


def test_kaggle_preset_is_the_published_design():
    cfg = config.get_config("kaggle")
    assert cfg.backbone == "convnext_large" and cfg.image_size == 224
    assert cfg.batch_size_per_replica == 16 and cfg.epochs_all == 40 and cfg.patience == 5
    assert (cfg.epochs_finetune1, cfg.epochs_finetune2) == (20, 20)
    assert (cfg.freeze_ratio_ft1, cfg.freeze_ratio_ft2) == (0.8, 0.6)
    assert (cfg.head_units, cfg.dropout, cfg.l2) == (256, 0.3, 1e-3)
    assert (cfg.loss_weight_quaternion, cfg.loss_weight_translation,
            cfg.loss_weight_outlier, cfg.loss_weight_center) == (10, 0.01, 10, 0.001)
    assert (cfg.warmup_fraction, cfg.warmup_initial_lr, cfg.warmup_peak_lr) == (0.2, 1e-8, 1e-4)
    assert (cfg.lr_all, cfg.lr_finetune1, cfg.lr_finetune2) == (1e-5, 1e-6, 1e-7)
    assert cfg.seed == 40
    assert cfg.data_dir == "/kaggle/input/image-matching-challenge-2025"
    assert cfg.output_dir == "/kaggle/working"


def test_config_is_frozen_and_validated():
    cfg = config.get_config("test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    with pytest.raises(ValueError, match="image_size must be positive"):
        cfg.replace(image_size=0)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        cfg.replace(mixed_precision="float8")
    with pytest.raises(ValueError, match="unknown preset"):
        config.get_config("huge")
    with pytest.raises(ValueError, match="unknown configuration field"):
        config.get_config("test", colour="red")


def test_every_field_is_overridable_from_the_command_line():
    cfg = parse(["--preset", "test", "--image-size", "48", "--lr-all", "0.5",
                 "--backbone", "convnext_small", "--run-name", "x"])
    assert (cfg.preset, cfg.image_size, cfg.lr_all, cfg.backbone, cfg.run_name) == (
        "test", 48, 0.5, "convnext_small", "x")
    assert cfg.head_units == config.PRESETS["test"]["head_units"]
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser)
    text = parser.format_help()
    for f in dataclasses.fields(config.Config):
        if f.name != "preset":
            assert "--" + f.name.replace("_", "-") in text


def test_auto_preset_without_kaggle_data_is_cpu_demo():
    assert parse([]).preset == "cpu-demo"
