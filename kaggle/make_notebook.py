"""Make the Kaggle notebook from its script, so that the two never drift apart.

    python kaggle/make_notebook.py            # writes kaggle/imc2025_submission.ipynb
    python kaggle/make_notebook.py --check    # exit 1 if the notebook is not the script's

Each cell of ``imc2025_submission.py`` starts at a ``# %%`` line (``# %% [markdown]`` for a
markdown cell, whose lines lose their leading ``# ``); the lines before the first one are the
script's own header and stay out of the notebook. The output is nbformat 4.5 JSON with no
outputs, and the same script always gives the same bytes (cell ids are their positions).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "imc2025_submission.py"
NOTEBOOK = HERE / "imc2025_submission.ipynb"
CELL_MARK = "# %%"
MARKDOWN_MARK = "# %% [markdown]"
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "version": "3.11"},
}


def split_cells(script: str) -> list[tuple[str, list[str]]]:
    """(cell type, lines) per ``# %%`` cell of ``script``, blank lines around each trimmed."""
    cells: list[tuple[str, list[str]]] = []
    for line in script.splitlines():
        if line.startswith(CELL_MARK):
            kind = "markdown" if line.strip() == MARKDOWN_MARK else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    if not cells:
        raise ValueError(f"no '{CELL_MARK}' cell marks in the script")
    trimmed = []
    for kind, lines in cells:
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "markdown":
            lines = [_uncomment(line) for line in lines]
        trimmed.append((kind, lines))
    return trimmed


def _uncomment(line: str) -> str:
    if not line.startswith("#"):
        raise ValueError(f"a markdown cell line must be a comment, got {line!r}")
    return line[2:] if line.startswith("# ") else line[1:]


def notebook_from_script(script: str) -> dict:
    """The notebook (nbformat 4.5, as a JSON-ready dict) of the script's cells."""
    cells = []
    for index, (kind, lines) in enumerate(split_cells(script)):
        source = [line + "\n" for line in lines]
        if source:
            source[-1] = source[-1].removesuffix("\n")
        cell = {"cell_type": kind, "id": f"cell-{index:02d}", "metadata": {}, "source": source}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {"cells": cells, "metadata": METADATA, "nbformat": 4, "nbformat_minor": 5}


def notebook_text(script: str) -> str:
    return json.dumps(notebook_from_script(script), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the notebook differs from the script's")
    args = parser.parse_args(argv)
    text = notebook_text(SCRIPT.read_text())
    if args.check:
        if not NOTEBOOK.is_file() or NOTEBOOK.read_text() != text:
            print(f"{NOTEBOOK} is not made from {SCRIPT}: run python kaggle/make_notebook.py",
                  file=sys.stderr)
            return 1
        print(f"{NOTEBOOK} matches {SCRIPT}")
        return 0
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
