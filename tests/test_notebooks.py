"""The tutorials in ``examples/`` run from top to bottom and their numbers are still what their text says.

Each notebook is executed in a fresh kernel (nbclient) in a temporary working folder, offline, on the bundled
organisms; its code cells ``assert`` the numbers its prose states, so a change that moves a number fails here.
The executed copy goes to ``build/notebooks/`` for the docs site (``scripts/docs.sh`` renders it with its
outputs). Notebooks are kept in git without outputs, so that diffs show code and prose only.

Marked ``notebook``: ``pytest -m "not notebook"`` is the quick suite; CI runs both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra (nbformat, nbclient) is not installed")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra (nbformat, nbclient) is not installed")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXECUTED = ROOT / "build" / "notebooks"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _read(path: Path) -> object:
    return nbformat.read(path, as_version=4)


def test_there_are_notebooks_and_they_are_stored_without_outputs() -> None:
    assert NOTEBOOKS, f"no notebooks in {EXAMPLES}"
    for path in NOTEBOOKS:
        notebook = _read(path)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, f"{path.name} has no code"
        stored = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
        assert not stored, f"{path.name}: code cells {stored} keep outputs; clear them (scripts/clear_notebooks.py)"
        assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# "), (
            f"{path.name} must open with a markdown title"
        )
        assert any("assert " in cell.source for cell in code), f"{path.name} checks none of the numbers it states"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_and_its_numbers_hold(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits these: one BLAS/torch thread (shared CI cores, see tests/conftest.py), no network.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    notebook = _read(path)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    partial = EXECUTED / f".{path.name}.tmp"
    nbformat.write(notebook, partial)
    os.replace(partial, EXECUTED / path.name)  # atomically: the docs never render half a notebook
