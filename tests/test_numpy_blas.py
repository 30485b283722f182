"""src/numpy_blas.py: NumPy loaded without the environment's OpenBLAS pins, every library
loaded after it with them. Each case runs in a child process of its own, since a process
loads NumPy once (this one already has)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Loads NumPy as main.py does, then SciPy's own OpenBLAS, and reports what each picked.
_REPORT = """
import json, os, sys
from src.numpy_blas import NUMPY_KERNELS_VARIABLE, load_numpy
how = load_numpy()
import numpy, scipy.linalg
from threadpoolctl import threadpool_info
kernels = {("numpy" if "numpy" in info["filepath"] else "scipy"): info.get("architecture")
           for info in threadpool_info() if info.get("internal_api") == "openblas"
           and ("numpy" in info["filepath"] or "scipy" in info["filepath"])}
print(json.dumps({"how": how, "coretype": os.environ.get("OPENBLAS_CORETYPE"),
                  "check": os.environ.get(NUMPY_KERNELS_VARIABLE), "kernels": kernels}))
"""


def _report(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", _REPORT], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _environment(**pins: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "IMC_NUMPY_KERNELS")}
    return {**env, **pins}


def test_numpy_picks_its_own_kernels_and_later_libraries_keep_the_pin():
    free = _report(_environment())  # what NumPy picks with no pin at all
    assert free["how"] == "no pins" and free["coretype"] is None
    # a pin unlike NumPy's own choice, so that each check below tells the two apart
    pin = "Sandybridge" if free["kernels"]["numpy"] != "Sandybridge" else "Haswell"
    pinned = _report(_environment(OPENBLAS_CORETYPE=pin))
    assert pinned["how"] == "own kernels" and pinned["check"] == "own"
    assert pinned["coretype"] == pin  # back for whatever loads next
    assert pinned["kernels"]["numpy"] == free["kernels"]["numpy"] != pin
    assert pinned["kernels"]["scipy"] == pin  # loaded after NumPy: pinned
    # a child of that process (the SfM helper, a dataset worker) trusts the check
    child = _report(_environment(OPENBLAS_CORETYPE=pin, IMC_NUMPY_KERNELS="own"))
    assert child["how"] == "own kernels"
    assert child["kernels"]["numpy"] == free["kernels"]["numpy"]


def test_numpy_stays_pinned_when_asked():
    kept = _report(_environment(OPENBLAS_CORETYPE="Sandybridge", IMC_NUMPY_KERNELS="pinned"))
    assert kept["how"] == "kept pinned (asked)"
    assert kept["kernels"]["numpy"] == "Sandybridge"


def test_a_failing_check_keeps_the_pins_and_loads_nothing(tmp_path):
    # The check's child finds a NumPy that fails to import (first on its PYTHONPATH, which
    # this process read at its start, before it was set).
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("raise ImportError('broken build')\n")
    code = f"""
import os, sys
from src.numpy_blas import load_numpy, own_kernels_check
os.environ.update(OPENBLAS_CORETYPE="Haswell", PYTHONPATH={str(tmp_path)!r})
assert "broken build" in own_kernels_check()
how = load_numpy()
assert how.startswith("kept pinned (check failed: ") and "broken build" in how, how
assert os.environ["IMC_NUMPY_KERNELS"] == "pinned"
assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
assert "numpy" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], env=_environment(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
