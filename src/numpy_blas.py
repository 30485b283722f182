"""NumPy's OpenBLAS on the kernels it picks itself, where the environment pins older builds'.

Some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for every process, because older
OpenBLAS builds bundled by other wheels misjudge their processor and compute wrong results:
on this 2-core AMD EPYC, without them, OpenCV's OpenBLAS 0.3.15 takes the CPU for a
"Barcelona" and plain pycolmap's bundle adjustment failed dense Cholesky factorisations 15
times in one benchmark. Each OpenBLAS in a process reads the variables once, when it is
loaded, so NumPy's own (0.3.27 with NumPy 2.0.2, which picks its "Cooperlake" AVX-512
kernels here) ran the pinned Haswell ones too: one 8192 x 8192-keypoint product of matching
took 0.19 s instead of 0.10 s, and realdev2's whole run 48 s instead of 34 s, the same
scores on every seed and data set (benchmarks/README.md).

:func:`load_numpy` is called before anything imports NumPy (main.py, the benchmarks): it
first checks, in a short child process without the pins, that NumPy loads there and that its
single- and double-precision products agree with a sum computed without BLAS; then loads
NumPy in this process without the pins and puts them back, so that every library loaded
later (OpenCV, pycolmap, SciPy) keeps them. Processes started from here (the SfM helper,
dataset workers) inherit the pins and the check's outcome (NUMPY_KERNELS_VARIABLE), and do
the same without checking again. ``NUMPY_KERNELS_VARIABLE=pinned`` keeps NumPy on the pins.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import MutableMapping

PIN_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
NUMPY_KERNELS_VARIABLE = "IMC_NUMPY_KERNELS"  # "own" (checked), "pinned" (left alone)

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


def own_kernels_work(environ: MutableMapping[str, str] = os.environ,
                     timeout_s: float = 60.0) -> bool:
    """Whether NumPy, loaded without the pins in a child process, computes its products
    right (see _CHECK); False on any failure, a crash included."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK], env=_unpinned(environ),
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "ok"


def load_numpy(environ: MutableMapping[str, str] = os.environ) -> str:
    """Load NumPy (see the module doc) and say how: "own kernels" (loaded without the
    pins), "no pins" (none set), "already loaded", "kept pinned" (asked, or the check
    failed). The pins are back in ``environ`` on return whatever happened."""
    pins = {k: environ[k] for k in PIN_VARIABLES if environ.get(k)}
    if "numpy" in sys.modules:
        return "already loaded"
    if not pins:
        return "no pins"
    wanted = environ.get(NUMPY_KERNELS_VARIABLE, "")
    if wanted == "pinned":
        return "kept pinned"
    if wanted != "own":
        if not own_kernels_work(environ):
            environ[NUMPY_KERNELS_VARIABLE] = "pinned"  # children need not check again
            return "kept pinned"
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
    found = sorted({f"{info.get('internal_api')} {info.get('version')} "
                    f"{info.get('architecture')}" for info in threadpool_info()
                    if info.get("user_api") == "blas"})
    return ", ".join(found) or "none loaded"
