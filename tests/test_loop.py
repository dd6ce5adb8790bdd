"""The in-memory closed loop returns the tables ``xlalign evaluate`` writes, equal to them, and writes nothing."""

from __future__ import annotations

import pandas as pd
from pandas.testing import assert_frame_equal

from conftest import tiny
from probes.data import demo_corpus
from xlalign import evaluate_methods
from xlalign.closed_loop import evaluate

CORPUS = demo_corpus().subset(["eng", "deu", "rus"], 16)


def test_evaluate_methods_returns_the_tables_evaluate_writes(tmp_path, monkeypatch):
    model, tokenizer = tiny("llama")
    options = dict(
        model=model,
        tokenizer=tokenizer,
        corpus=CORPUS,
        methods=["shift", "diffmean"],
        n_loss=4,
        n_prompts=2,
        progress=False,
    )
    monkeypatch.chdir(tmp_path)
    result = evaluate_methods(**options)
    assert list(tmp_path.iterdir()) == [], "nothing written"
    report = evaluate(tmp_path / "out", **options)
    written = pd.read_csv(report.parent / "evaluation.csv")
    assert_frame_equal(result.evaluation.reset_index(drop=True), written, check_dtype=False, rtol=1e-12)
    assert_frame_equal(result.generations, pd.read_csv(report.parent / "generations.csv").fillna(""), check_dtype=False)
    assert result.best.iloc[0].gain == result.best.gain.max()
    assert {s.method for s in result.settings} == {"shift", "diffmean"} and set(result.findings.by_method) == {
        "shift",
        "diffmean",
    }
