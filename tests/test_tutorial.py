"""The tutorial notebook (docs/tutorial.ipynb) runs from top to bottom, on fixture data, without an error."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
pytestmark = pytest.mark.slow


def test_the_tutorial_runs_on_fixture_data(tmp_path, fixtures_dir, monkeypatch):
    monkeypatch.setenv("TUTORIAL_IN", f"npz:{fixtures_dir / 'fashionmnist-small.npz'}")
    monkeypatch.setenv("TUTORIAL_OOD", f"npz:{fixtures_dir / 'mnist-small.npz'}")
    monkeypatch.setenv("TUTORIAL_STEPS", "120")
    monkeypatch.setenv("TUTORIAL_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   env=dict(os.environ)).execute()
    text = "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for o in cell.get("outputs", []))
    for expected in ("AUROC of the likelihood:", "AUROC of the complexity score:",
                     "AUROC of the likelihood of a flow on CNN features:", "input,score,decision"):
        assert expected in text, expected
    rows = (tmp_path / "work" / "scores.csv").read_text().splitlines()
    assert len(rows) == 9  # the header and the eight images of the new folder
