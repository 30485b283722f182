"""Run folders: their log goes to the current run only."""

from __future__ import annotations

import logging
from dataclasses import fields

import pytest

from config import Config, ConfigError, get_config, resumable_fields
from src.run_context import RunContext


def test_each_run_logs_into_its_own_file_only(tmp_path):
    first = RunContext.create(get_config("test", output_dir=str(tmp_path), run_name="a"))
    second = RunContext.create(get_config("test", output_dir=str(tmp_path), run_name="b"))
    logging.getLogger("imc").warning("only in the second run")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "only in the second run" in (second.run_dir / "run.log").read_text()
    assert "only in the second run" not in (first.run_dir / "run.log").read_text()


def test_default_run_names_keep_pipelines_and_data_apart(tmp_path):
    from config import get_config
    from src.run_context import default_run_name

    assert default_run_name(get_config("cpu-demo")) == "cpu-demo"
    assert default_run_name(get_config("cpu-demo", pipeline="geometric")) == "cpu-demo-geometric"
    other = get_config("cpu-demo", pipeline="geometric", data_dir=str(tmp_path / "realdev_input"))
    assert default_run_name(other) == "cpu-demo-geometric-realdev_input"
    assert default_run_name(get_config("test")) == "test"


def test_fields_that_may_change_on_resumption_are_marked_on_the_fields():
    assert resumable_fields() == {
        "overwrite", "run_name", "output_dir", "outlier_threshold", "cluster_min_samples",
        "cluster_eps_quantile", "cluster_eps_scale", "cluster_pose_weight",
        "cluster_feature_weight", "pipeline", "features", "max_keypoints", "max_image_side",
        "affine_tilt",
        "pair_top_k", "pair_exhaustive_below", "retrieval", "retrieval_weights",
        "retrieval_image_side", "match_ratio",
        "ransac_threshold_px", "min_verified_inliers", "graph_min_inliers", "min_scene_size",
        "unregistered", "sfm_threads", "camera_sharing", "escalate_below", "escalate_weak_share",
        "merge_models",
        "graph_strong_inliers", "reregister_below_points",
        "matcher",
        "feature_model", "feature_weights", "matcher_weights", "torch_device", "mapper",
        "rotation_retry", "workers"}
    assert {f.name for f in fields(Config)} > resumable_fields()


def test_a_run_resumes_with_other_resumable_values_but_not_other_training(tmp_path):
    cfg = get_config("test", output_dir=str(tmp_path), run_name="run")
    RunContext.create(cfg)
    RunContext.create(cfg.replace(outlier_threshold=0.3, pipeline="geometric", sfm_threads=2))
    with pytest.raises(ConfigError, match=r"another configuration \(image_size, seed\)"):
        RunContext.create(cfg.replace(image_size=40, seed=1, match_ratio=0.7))
    RunContext.create(cfg.replace(image_size=40), stage="infer")  # infer only reads the model
