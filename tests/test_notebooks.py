"""Every notebook runs top to bottom (on a tiny random model, so the suite stays fast)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("XLALIGN_MODEL", "random:llama")
    namespace = runpy.run_path(str(path))
    assert "figure" in namespace and namespace["figure"].axes, "the notebook ends with a figure"
    table = namespace["table"]  # layer x non-pivot language x metric, every value a fraction
    assert len(table) == 5 * 4 * 2 and table["value"].between(0, 1).all()
    assert table["value"].nunique() > 1, "the scores differ across layers and languages"
