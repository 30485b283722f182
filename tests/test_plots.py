"""Plots: loss curves of a training history, and matplotlib loaded only when drawing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from src.plots import plot_history

ROOT = Path(__file__).resolve().parents[1]


def test_history_plots_one_png_per_present_column(tmp_path):
    history = pd.DataFrame({"stage": ["easy", "all", "all"], "global_epoch": [0, 1, 2],
                            "epoch": [0, 0, 1], "loss": [3.0, 2.0, 1.5],
                            "val_loss": [3.2, 2.5, 2.0], "quaternion_loss": [1.0, 0.8, 0.7]})
    written = plot_history(history, tmp_path / "plots", ("loss", "quaternion_loss", "absent"))
    assert written == [tmp_path / "plots" / "loss.png",
                       tmp_path / "plots" / "quaternion_loss.png"]
    assert all(path.stat().st_size > 0 for path in written)
    assert plot_history(history.iloc[:0], tmp_path / "empty", ("loss",)) == []


def test_matplotlib_is_loaded_when_drawing_not_on_import(tmp_path):
    probe = ("import sys, pandas as pd\n"
             "import src.plots\n"
             "print('matplotlib' in sys.modules)\n"
             "src.plots.plot_history(pd.DataFrame({'stage': ['a'], 'global_epoch': [0], "
             f"'loss': [1.0]}}), {str(tmp_path)!r}, ('loss',))\n"
             "import matplotlib\n"
             "print(matplotlib.get_backend().lower())")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "agg"]
