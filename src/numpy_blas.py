"""NumPy's OpenBLAS on the kernels it picks itself, where the environment pins older builds'.

Some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for every process, because older
OpenBLAS builds bundled by other wheels misjudge their processor and may compute wrong
results or crash (on this 2-core AMD EPYC, without them, OpenCV's OpenBLAS 0.3.15 takes the
CPU for a "Barcelona"). Each OpenBLAS in a process reads the variables once, when it is
loaded, so NumPy's own (0.3.27 with NumPy 2.0.2, which picks its "Cooperlake" AVX-512
kernels here) ran the pinned Haswell ones too: one 8192 x 8192-keypoint product of matching
took 0.19 s instead of 0.10 s, and realdev2's whole run 48 s instead of 34 s, the same
scores on every seed and data set (benchmarks/README.md).

:func:`load_numpy` is called before anything imports NumPy, at the top of main.py and of the
benchmark scripts: it first checks, in a short child process without the pins, that NumPy
loads there and that its single- and double-precision products agree with sums computed
without BLAS; then loads NumPy in this process without the pins and puts them back, so that
every library loaded later (OpenCV, pycolmap, SciPy) keeps them. The SfM helper and dataset
workers spawned from those scripts run the script's top again and inherit the check's
outcome in ``IMC_NUMPY_KERNELS``: "own" (the check passed: NumPy is loaded unpinned without
checking again; set by hand it skips the check) or "pinned" (NumPy keeps the pins: set it to
ask for that). A program that imports NumPy first (a notebook, ``python -m``) is left as it
is.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import MutableMapping

PIN_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
NUMPY_KERNELS_VARIABLE = "IMC_NUMPY_KERNELS"  # "own" (no check needed), "pinned"

# Run by the check's child process: NumPy's products against sums without BLAS (its own
# loops), sizes that take OpenBLAS's blocked GEMM kernels.
_CHECK = """
import numpy as np
rng = np.random.default_rng(0)
for dtype, tolerance in ((np.float32, 1e-4), (np.float64, 1e-10)):
    a = rng.random((260, 130)).astype(dtype)
    b = rng.random((130, 300)).astype(dtype)
    reference = (a[:, :, None].astype(np.float64) * b[None, :, :]).sum(axis=1)
    error = np.abs(a @ b - reference).max() / np.abs(reference).max()
    assert error < tolerance, (dtype, error)
print("ok")
"""


def _unpinned(environ: MutableMapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in PIN_VARIABLES}


def own_kernels_check(environ: MutableMapping[str, str] = os.environ,
                      timeout_s: float = 60.0) -> str | None:
    """None when NumPy, loaded without the pins in a child process with ``environ``,
    computes its products right (see _CHECK); else what went wrong (a crash included)."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK], env=_unpinned(environ),
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode == 0 and done.stdout.strip() == "ok":
        return None
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return last[:200]


def load_numpy() -> str:
    """Load NumPy (see the module doc) and say how: "own kernels" (loaded without the
    pins), "no pins" (none set), "already loaded", "kept pinned (asked)" or "kept pinned
    (check failed: ...)". The pins are back in os.environ on return whatever happened."""
    environ = os.environ  # what the C library's getenv, and so OpenBLAS, reads
    pins = {k: environ[k] for k in PIN_VARIABLES if environ.get(k)}
    if "numpy" in sys.modules:
        return "already loaded"
    if not pins:
        return "no pins"
    wanted = environ.get(NUMPY_KERNELS_VARIABLE, "")
    if wanted == "pinned":
        return "kept pinned (asked)"
    if wanted != "own":
        problem = own_kernels_check(environ)
        if problem is not None:
            environ[NUMPY_KERNELS_VARIABLE] = "pinned"  # children need not check again
            return f"kept pinned (check failed: {problem})"
        environ[NUMPY_KERNELS_VARIABLE] = "own"
    for name in pins:
        del environ[name]
    try:
        importlib.import_module("numpy")  # its OpenBLAS picks its kernels now, unpinned
    finally:
        environ.update(pins)
    return "own kernels"


def describe_blas() -> str:
    """The BLAS libraries loaded and the kernels each picked ("openblas 0.3.27 Cooperlake,
    ..."), for the log and the benchmarks' headers."""
    from threadpoolctl import threadpool_info
    found = sorted({" ".join(str(info[key]) for key in ("internal_api", "version",
                                                         "architecture") if info.get(key))
                    for info in threadpool_info() if info.get("user_api") == "blas"})
    return ", ".join(found) or "none loaded"
