"""The typed configuration, its presets and the command line built from it."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import config

ROOT = Path(__file__).resolve().parents[1]


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
    for name in ("escalate_below", "escalate_weak_share"):
        with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\], got 1.5"):
            cfg.replace(**{name: 1.5})


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


def test_the_defaults_are_the_cpu_demo_preset():
    assert config.Config() == config.get_config("cpu-demo")
    assert config.Config().preset == "cpu-demo"


def test_help_lists_the_choices_of_a_text_option():
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser)
    text = parser.format_help()
    assert "--features {auto,sift,aliked,disk}" in text
    assert "--unregistered {outliers,nan}" in text
    assert "--backbone STR" in text and "--seed INT" in text  # no choices: the type


def help_texts():
    parser = argparse.ArgumentParser()
    config.add_config_arguments(parser)
    return {action.dest: action.help for action in parser._actions}


def test_help_names_the_value_of_every_preset_where_presets_differ():
    helps = help_texts()
    assert helps["warmup_peak_lr"].endswith("(default 0.002; kaggle, gpu, tpu: 0.0001)")
    assert helps["epochs_all"].endswith("(default 4; kaggle, gpu, tpu: 40; test: 2)")
    assert helps["seed"].endswith("(default 40)")
    assert helps["backbone_weights"].endswith("(default '')")
    assert f"which is {config.auto_preset()} here" in helps["preset"]
    # What the help says each preset runs with is what it runs with.
    for f in dataclasses.fields(config.Config):
        if f.name == "preset":
            continue
        default, *changed = config.preset_values(f.name).split("; ")
        said = {preset: default.removeprefix("default ") for preset in config.PRESETS}
        for part in changed:
            names, value = part.split(": ", 1)
            said.update({preset: value for preset in names.split(", ")})
        for preset, value in said.items():
            actual = getattr(config.get_config(preset), f.name)
            assert value == (repr(actual) if actual == "" else str(actual)), (f.name, preset)


def test_config_imports_no_heavy_library():
    probe = ("import sys, config\n"
             "print(sorted(m for m in ('tensorflow', 'torch', 'cv2', 'h5py', 'pycolmap', "
             "'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# What a Config decides per run instead of leaving it to the stage's default: the ``auto``
# choices (resolved by device and features) and, in every stage that has one, the run's seed.
RESOLVED_PER_RUN = {"features": ("name", "max_keypoints"), "matching": ("matcher",),
                    "reconstruction": ("mapper",)}


@pytest.mark.parametrize("preset", sorted(config.PRESETS))
def test_every_preset_runs_the_geometric_stages_with_their_own_defaults(preset):
    from src.geometric.pipeline import GeometricConf

    conf = GeometricConf.from_config(config.get_config(preset, pipeline="geometric"))

    def stage_defaults(stage):
        actual = getattr(conf, stage)
        resolved = {*RESOLVED_PER_RUN.get(stage, ()),
                    *({"seed"} & {f.name for f in dataclasses.fields(actual)})}
        return type(actual)(**{name: getattr(actual, name) for name in resolved})

    stages = ("features", "pairs", "matching", "graph", "reconstruction", "merge")
    assert conf == GeometricConf(**{stage: stage_defaults(stage) for stage in stages})


@pytest.mark.parametrize("preset", sorted(config.PRESETS))
def test_every_preset_escalates_by_the_stages_own_bars(preset):
    from src.geometric.escalation import EscalationConf
    from src.geometric.pipeline import GeometricConf

    escalation = GeometricConf.from_config(config.get_config(preset, pipeline="geometric")
                                           ).escalation
    defaults = EscalationConf()
    assert (escalation.below, escalation.weak_share, escalation.weak_pairs) == \
        (defaults.below, defaults.weak_share, defaults.weak_pairs)


@pytest.mark.parametrize("preset", sorted(config.PRESETS))
def test_every_preset_clusters_with_the_stages_own_defaults(preset):
    from src.learned.clustering import ClusterSettings

    assert ClusterSettings.from_config(config.get_config(preset)) == ClusterSettings()


def test_geometric_choices_are_the_stages_own():
    from src.geometric import options

    cfg = config.get_config("cpu-demo")
    assert (cfg.min_verified_inliers, cfg.graph_min_inliers) == (10, 10)  # measured, see options
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(config.Config)}
    assert choices["features"] == ("auto", *options.FEATURE_NAMES)
    assert choices["matcher"] == ("auto", *options.MATCHERS)
    assert choices["retrieval"] == ("auto", *options.RETRIEVALS)
    assert choices["unregistered"] == options.UNREGISTERED_POLICIES
    assert choices["torch_device"] == options.TORCH_DEVICES
