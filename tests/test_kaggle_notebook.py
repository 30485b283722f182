"""The Kaggle notebook (kaggle/): made from its script, and run cell by cell on a fake
/kaggle/input (generated competition data, the repository as the code dataset, no wheels)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from config import DEMO_SIZES
from src.demo_data import DemoSpec, generate_demo_dataset
from src.submission import list_test_images, read_submission, validate_submission

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT / "kaggle"
COMPETITION = "image-matching-challenge-2025"
CODE = "imc2025-pipeline"


def run_notebook(monkeypatch, input_root: Path, working: Path, **settings: str) -> dict:
    """Execute the notebook's code cells in order in one namespace, as a kernel would, with
    the IMC_KAGGLE_* ``settings`` (INPUT and WORKING set here); returns the namespace."""
    for name in [n for n in os.environ if n.startswith("IMC_KAGGLE_")]:
        monkeypatch.delenv(name)
    settings = {"INPUT": str(input_root), "WORKING": str(working), **settings}
    for name, value in settings.items():
        monkeypatch.setenv(f"IMC_KAGGLE_{name}", value)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the last cell puts the code first
    notebook = json.loads((KAGGLE / "imc2025_submission.ipynb").read_text())
    namespace = {"__name__": "__main__"}
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    for index, cell in enumerate(code_cells):
        exec(compile("".join(cell["source"]), f"notebook code cell {index}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory):
    """/kaggle/input as the notebook sees it: the competition data (tiny demo data) and the
    repository as the code dataset; no wheels, no weights."""
    root = tmp_path_factory.mktemp("input")
    generate_demo_dataset(root / COMPETITION, DemoSpec(**DEMO_SIZES["tiny"], seed=5))
    (root / CODE).symlink_to(ROOT, target_is_directory=True)
    return root


# --------------------------------------------------------------------------- the notebook file
def test_the_notebook_is_made_from_the_script(load_script):
    generator = load_script("kaggle/make_notebook.py")
    script = (KAGGLE / "imc2025_submission.py").read_text()
    notebook_path = KAGGLE / "imc2025_submission.ipynb"
    assert notebook_path.read_text() == generator.notebook_text(script), \
        "the notebook has drifted from its script: run python kaggle/make_notebook.py"
    assert generator.main(["--check"]) == 0
    notebook = json.loads(notebook_path.read_text())
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert kinds[0] == "markdown" and kinds.count("code") >= 4
    for cell in notebook["cells"]:
        assert set(cell) >= {"cell_type", "id", "metadata", "source"}
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            compile("".join(cell["source"]), cell["id"], "exec")
    # the script's header (its docstring) is not a cell; markdown loses its comment marks
    assert not any("IMC_KAGGLE_INPUT=/tmp/input" in "".join(c["source"])
                   for c in notebook["cells"])
    assert notebook["cells"][0]["source"][0].startswith("# IMC 2025")


def test_the_generator_splits_cells_and_refuses_code_in_markdown(load_script):
    generator = load_script("kaggle/make_notebook.py")
    script = "'''header'''\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\ny = 2\n"
    notebook = generator.notebook_from_script(script)
    assert [c["cell_type"] for c in notebook["cells"]] == ["markdown", "code", "code"]
    assert notebook["cells"][0]["source"] == ["# Title\n", "\n", "text"]
    assert notebook["cells"][1]["source"] == ["x = 1"]
    with pytest.raises(ValueError, match="must be a comment"):
        generator.notebook_from_script("# %% [markdown]\nx = 1\n")
    with pytest.raises(ValueError, match="no '# %%' cell marks"):
        generator.notebook_from_script("x = 1\n")


# --------------------------------------------------------------------------- missing inputs
def test_missing_inputs_are_named_before_anything_runs(tmp_path, monkeypatch):
    input_root, working = tmp_path / "input", tmp_path / "working"
    input_root.mkdir()
    with pytest.raises(FileNotFoundError, match="competition data not found"):
        run_notebook(monkeypatch, input_root, working)
    (input_root / COMPETITION / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"no main.py in .*{CODE}"):
        run_notebook(monkeypatch, input_root, working)
    # a code dataset uploaded with its top folder is found one level down
    (input_root / CODE).mkdir()
    (input_root / CODE / "imc-main").symlink_to(ROOT, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="wheels not found: .*imc2025-wheels"):
        run_notebook(monkeypatch, input_root, working)
    with pytest.raises(ValueError, match="KEEP = 'hybrid' is not one of the pipelines run"):
        run_notebook(monkeypatch, input_root, working, KEEP="hybrid")
    assert not working.exists()  # nothing ran


# --------------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_the_notebook_leaves_a_valid_submission(kaggle_input, tmp_path, monkeypatch):
    """learned (tiny), hybrid with the learned run's model, geometric: the geometric one is
    kept as working/submission.csv."""
    working = tmp_path / "working"
    namespace = run_notebook(monkeypatch, kaggle_input, working, SKIP_INSTALL="1",
                             PRESET="test", PIPELINES="learned hybrid geometric",
                             EXTRA_ARGS="--epochs-finetune1 0 --epochs-finetune2 0")
    expected = list_test_images(kaggle_input / COMPETITION)
    submission = read_submission(working / "submission.csv")
    validate_submission(submission, expected_images=expected)
    assert list(submission["image_id"]) == list(expected["image_id"])
    assert (working / "submission.csv").read_text() == \
        (working / "submissions" / "geometric.csv").read_text()
    for pipeline in ("learned", "hybrid", "geometric"):
        validate_submission(read_submission(working / "submissions" / f"{pipeline}.csv"),
                            expected_images=expected)
    assert namespace["chosen"] == "geometric"
    assert (working / "runs" / "learned" / "model.keras").is_file()
    assert not (working / "runs" / "hybrid").exists()  # hybrid reused the learned model
    config = json.loads((working / "runs" / "learned" / "config_infer.json").read_text())
    assert config["pipeline"] == "hybrid"


@pytest.mark.slow
def test_a_failed_pipeline_leaves_the_other_ones_submission(kaggle_input, tmp_path,
                                                           monkeypatch, capsys):
    """No training labels: the learned run stops (exit 2), the geometric one's submission is
    kept with a warning."""
    input_root = tmp_path / "input"
    data = input_root / COMPETITION
    data.mkdir(parents=True)
    shutil.copytree(kaggle_input / COMPETITION / "test", data / "test")
    shutil.copy(kaggle_input / COMPETITION / "sample_submission.csv", data)
    (input_root / CODE).symlink_to(ROOT, target_is_directory=True)
    working = tmp_path / "working"
    run_notebook(monkeypatch, input_root, working, SKIP_INSTALL="1", PRESET="test",
                 PIPELINES="learned geometric", KEEP="learned")
    out = capsys.readouterr().out
    assert "WARNING: the learned pipeline failed (exit 2)" in out
    assert "keeping the geometric pipeline's submission" in out
    submission = pd.read_csv(working / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(submission, expected_images=list_test_images(data))
    assert not (working / "submissions" / "learned.csv").exists()
