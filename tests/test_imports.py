"""What each entry point loads: `--help`, a geometric run, the scorer and the viewer never
import TensorFlow (3 s of start-up for nothing), and `--help` and a VLAD run never import
transformers (DINOv2 retrieval's); each runs in its own interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tensorflow_graphics")


def loaded_after(code: str) -> set[str]:
    """Top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.strip().splitlines()[-1].split())


def test_help_does_not_import_tensorflow():
    loaded = loaded_after("import contextlib, io, main\n"
                          "with contextlib.redirect_stdout(io.StringIO()):\n"
                          "    try:\n        main.parse_args(['--help'])\n"
                          "    except SystemExit:\n        pass")
    assert not loaded & set(HEAVY)
    assert "transformers" not in loaded


def test_scorer_and_viewer_do_not_import_tensorflow():
    loaded = loaded_after("import src.evaluation, src.viewer.data, src.viewer.figures, "
                          "src.viewer.uploads")
    assert not loaded & set(HEAVY)


def test_viewer_app_does_not_import_tensorflow():
    loaded = loaded_after("from streamlit.testing.v1 import AppTest\n"
                          "AppTest.from_file('src/viewer/app.py', default_timeout=60).run()")
    assert not loaded & set(HEAVY)


@pytest.mark.slow
def test_geometric_run_does_not_import_tensorflow(tmp_path):
    code = (f"from src.demo_data import DemoSpec, generate_demo_dataset\n"
            f"from config import DEMO_SIZES\n"
            f"import main\n"
            f"data = generate_demo_dataset({str(tmp_path)!r}, DemoSpec(**DEMO_SIZES['tiny'], seed=3))\n"
            f"assert main.main(['--pipeline', 'geometric', '--preset', 'test', '--data-dir', "
            f"str(data), '--output-dir', {str(tmp_path / 'out')!r}]) == 0")
    loaded = loaded_after(code)
    assert not loaded & set(HEAVY)
    assert "transformers" not in loaded  # VLAD chose the pairs: no DINOv2
    assert "pycolmap" in loaded  # it did run SfM
