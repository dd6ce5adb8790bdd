"""The main job: capture -> measure -> figures and report.md (steering and evaluation join in later)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from probes.atomic import atomic_path, write_text
from probes.corpus import load_corpus
from probes.metrics import measure_store
from probes.models import load_model
from probes.plots import alignment_per_layer
from probes.sites import Site, n_layers
from probes.store import capture_to_store

RUN_METRICS = ("retrieval_top1", "mexa")
_OUTPUTS = {"store", "metrics.csv", "alignment_per_layer.png", "report.md"}


class RunError(ValueError):
    """A run that cannot start (its output directory holds someone else's files, a missing pivot, ...)."""


def run(
    out: str | Path,
    *,
    model: str = "default",
    corpus: str = "demo",
    langs: Sequence[str] | None = None,
    max_sentences: int | None = None,
    pivot: str = "eng",
    pooling: str = "mean",
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """Capture every layer's residual stream, measure alignment with ``pivot``, write figure and report.

    Rerunning into the same ``out`` resumes the capture and rewrites the run's own outputs; a directory
    holding other files is refused, so nothing the user saved is overwritten. Returns the report's path.
    """
    out = Path(out)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUTS) if out.is_dir() else []
    if foreign:
        raise RunError(f"{out} holds files that xlalign run did not write ({', '.join(foreign[:5])}); choose another --out")
    parallel = load_corpus(corpus, langs=langs, max_sentences=max_sentences)
    if pivot not in parallel.languages:
        raise RunError(f"pivot language {pivot!r} is not among the corpus languages {', '.join(parallel.languages)}")
    network, tokenizer = load_model(model)
    sites = [Site(layer, "resid") for layer in range(n_layers(network) + 1)]
    store = capture_to_store(
        network, tokenizer, parallel, sites, out / "store", pooling=pooling, batch_size=batch_size, progress=progress
    )
    table = measure_store(store, pivot=pivot, metrics=RUN_METRICS)
    write_text(out / "metrics.csv", table.to_csv(index=False))
    title = f"{network.config.name_or_path}: alignment with {pivot} ({pooling} pooling, {len(parallel)} sentences)"
    with atomic_path(out / "alignment_per_layer.png") as temporary:
        alignment_per_layer(table, RUN_METRICS, title=title).savefig(temporary, format="png", dpi=110)
    report = out / "report.md"
    write_text(report, render_report(table, model=str(network.config.name_or_path), corpus=parallel.name,
                                     n_sentences=len(parallel), pivot=pivot, pooling=pooling))
    return report


def render_report(table: pd.DataFrame, *, model: str, corpus: str, n_sentences: int, pivot: str, pooling: str) -> str:
    """report.md: what was run, the figure, and per-language summaries."""
    languages = sorted(table["language"].unique())
    retrieval = table[table["metric"] == "retrieval_top1"].pivot(index="layer", columns="language", values="value")
    mexa = table[table["metric"] == "mexa"].pivot(index="layer", columns="language", values="value")
    best_layers = retrieval.mean(axis=1).sort_values(ascending=False).index[:3].tolist()
    lines = [
        "# xlalign report",
        "",
        f"- model: `{model}`",
        f"- corpus: `{corpus}`, {n_sentences} parallel sentences, languages: {', '.join([pivot, *languages])}",
        f"- pivot: `{pivot}`; pooling: `{pooling}`; layer 0 = embedding output, layer i = output of block i",
        f"- command: `{shlex.join(['xlalign', *sys.argv[1:]])}`",
        "",
        "![alignment per layer](alignment_per_layer.png)",
        "",
        f"Most aligned layers (mean retrieval top-1 over languages): {', '.join(map(str, best_layers))}.",
        "",
        "| language | best layer (retrieval) | retrieval top-1 there | MEXA mean over layers | MEXA max over layers |",
        "|---|---|---|---|---|",
    ]
    for language in languages:
        best = int(retrieval[language].idxmax())
        lines.append(
            f"| {language} | {best} | {retrieval[language][best]:.3f} | {mexa[language].mean():.3f} | {mexa[language].max():.3f} |"
        )
    lines += ["", "Full per-layer values: `metrics.csv` (columns layer, language, metric, value).", ""]
    return "\n".join(lines)
