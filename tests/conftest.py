"""Shared test set-up.

SfM's pycolmap calls go to a helper process where this one has a core to spare and a
dataset's scenes are mapped side by side (src.geometric.concurrency: sfm_slots). A test
that replaces a function (monkeypatch) replaces it in this process only, so the helper is
left out here; tests/test_concurrency.py turns it back on and shows it gives the models
mapped here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _sfm_in_this_process(monkeypatch):
    from src.geometric import pipeline

    monkeypatch.setattr(pipeline, "helper_wanted", lambda: False)


@pytest.fixture(scope="session")
def load_script():
    """A loader of the repository's scripts (benchmarks/, kaggle/), which are not a
    package: ``load_script("benchmarks/small_scenes.py")`` imports the file as a module."""
    def load(relative_path: str):
        path = REPO_ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
