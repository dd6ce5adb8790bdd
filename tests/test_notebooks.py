"""Every notebook runs top to bottom (on a tiny random model, so the suite stays fast) and computes what it says."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("XLALIGN_MODEL", "random:llama")
    monkeypatch.setenv("XLALIGN_SENTENCES", "24")
    namespace = runpy.run_path(str(path))
    if path.name.startswith("01_"):
        check_alignment_per_layer(namespace)


def check_alignment_per_layer(namespace) -> None:
    """The table holds retrieval and MEXA per layer and language, computed from per-token activations read by
    another route (trace, then a mean over each sentence's tokens); the figure draws exactly those values."""
    from probes.analysis import mexa, retrieval_top1
    from probes.capture import trace

    model, tokenizer, corpus, sites, table = (namespace[k] for k in ("model", "tokenizer", "corpus", "sites", "table"))
    assert len(table) == len(sites) * 4 * 2 and len(corpus) == 24
    pooled = {lang: trace(model, tokenizer, corpus.texts(lang), sites) for lang in corpus.languages}
    for site in (sites[0], sites[len(sites) // 2], sites[-1]):
        means = {lang: torch.stack([t.mean(0) for t in rec.tokens(site)]) for lang, rec in pooled.items()}
        for lang in ("deu", "hin"):
            rows = table[(table.layer == site.layer) & (table.language == lang)].set_index("metric").value
            assert rows["mexa"] == pytest.approx(mexa(means["eng"], means[lang]), abs=1e-9)
            assert rows["retrieval_top1"] == pytest.approx(retrieval_top1(means["eng"], means[lang]), abs=1e-9)
    panel = namespace["figure"].axes[0]  # retrieval_top1: one line per language over the layers
    deu = table[(table.metric == "retrieval_top1") & (table.language == "deu")].sort_values("layer")
    (line,) = [line for line in panel.get_lines() if line.get_label() == "deu"]
    np.testing.assert_allclose(line.get_ydata(), deu.value.to_numpy())
