"""Shared test set-up.

SfM's pycolmap calls go to a helper process where this one has a core to spare and a
dataset's scenes are mapped side by side (src.geometric.concurrency: sfm_slots). A test
that replaces a function (monkeypatch) replaces it in this process only, so the helper is
left out here; tests/test_concurrency.py turns it back on and shows it gives the models
mapped here.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _sfm_in_this_process(monkeypatch):
    from src.geometric import pipeline

    monkeypatch.setattr(pipeline, "helper_wanted", lambda: False)
