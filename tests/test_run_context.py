"""Run folders: their log goes to the current run only."""

from __future__ import annotations

import logging

from config import get_config
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
