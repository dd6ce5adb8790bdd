"""The main job: capture -> measure -> find -> steer -> evaluate on held-out -> report.md with figures."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from probes.atomic import write_text
from probes.corpus import ParallelCorpus, load_corpus
from probes.langid import LanguageIdentifier
from probes.metrics import measure_store
from probes.models import load_model
from probes.plots import alignment_per_layer, before_after, best_settings, langid_per_layer, neurons_per_layer, pareto
from probes.routing_metrics import divergence_heatmap, expert_usage, measure_routing, router_matrices, usage_heatmap
from probes.sites import Site, n_layers, router_layers
from probes.store import capture_to_store
from steer.apply import steer
from steer.evaluate import continuations, evaluate
from steer.methods import available_methods, fit_methods, settings
from steer.report import (
    alignment_section, header, language_specific_section, routing_section, save_figure, steering_section,
)  # fmt: skip

_RUN_OUTPUTS = {"store", "metrics.csv", "alignment_per_layer.png", "langid_per_layer.png", "report.md",
                "routing_divergence.png", "expert_usage.png"}
_EVALUATION_OUTPUTS = {"evaluation.csv", "generations.csv", "before_after.png", "pareto.png", "lape_neurons.png"}


class RunError(ValueError):
    """A run that cannot start (its output directory holds someone else's files, a missing pivot, ...)."""


def _claim(out: Path, allowed: set[str]) -> None:
    """Refuse an output directory that holds files this job did not write (nothing the user saved is lost)."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed) if out.is_dir() else []
    if foreign:
        raise RunError(f"{out} holds files that xlalign did not write ({', '.join(foreign[:5])}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _start(out: str | Path, allowed: set[str], corpus: ParallelCorpus | str, pivot: str, model: str):
    """Claim ``out``, load the corpus (checking the pivot is in it) and the model."""
    out = Path(out)
    _claim(out, allowed)
    parallel = load_corpus(corpus) if isinstance(corpus, str) else corpus
    if pivot not in parallel.languages:
        raise RunError(f"pivot language {pivot!r} is not among the corpus languages {', '.join(parallel.languages)}")
    return (out, parallel, *load_model(model))


def run(
    out: str | Path,
    *,
    model: str = "default",
    corpus: ParallelCorpus | str = "demo",
    pivot: str = "eng",
    pooling: str = "mean",
    steer_langs: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    n_loss: int = 32,
    n_prompts: int = 8,
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """Measure alignment per layer for every language, then fit, steer and evaluate ``steer_langs``.

    ``steer_langs`` defaults to the three languages least aligned with the pivot (mean MEXA over layers).
    Rerunning into the same ``out`` resumes the capture and rewrites the run's own outputs. Returns report.md.
    """
    out, parallel, network, tokenizer = _start(out, _RUN_OUTPUTS | _EVALUATION_OUTPUTS, corpus, pivot, model)
    routed = router_layers(network)
    sites = [Site(layer, "resid") for layer in range(n_layers(network) + 1)] + [Site(layer, "router") for layer in routed]
    store = capture_to_store(network, tokenizer, parallel, sites, out / "store", pooling=pooling,
                             batch_size=batch_size, progress=progress)  # fmt: skip
    table = measure_store(store, pivot=pivot, metrics="all")
    routing = measure_routing(store, pivot) if routed and pooling == "mean" else None
    write_text(out / "metrics.csv", pd.concat([table, routing]).to_csv(index=False))
    name = str(network.config.name_or_path)
    title = f"{name}: alignment with {pivot} ({pooling} pooling, {len(parallel)} sentences)"
    alignment = save_figure(alignment_per_layer(table, ("retrieval_top1", "mexa"), title=title), out / "alignment_per_layer.png")
    langid = save_figure(langid_per_layer(table), out / "langid_per_layer.png")
    if routing is not None:
        divergence = save_figure(divergence_heatmap(routing, title=f"{name}: routing divergence from {pivot}"),
                                 out / "routing_divergence.png")  # fmt: skip
        usage = expert_usage(router_matrices(store, "selected"))
        usage_figure = save_figure(usage_heatmap(usage, title="expert usage per language"), out / "expert_usage.png")
    if steer_langs is None:
        mexa = table[table["metric"] == "mexa"].groupby("language")["value"].mean()
        steer_langs = mexa.sort_values().index[:3].tolist()
    steering, neurons = closed_loop(network, tokenizer, parallel, out, languages=steer_langs, pivot=pivot,
                                    methods=methods, test_fraction=test_fraction, n_loss=n_loss, n_prompts=n_prompts,
                                    batch_size=batch_size, progress=progress)  # fmt: skip
    lines = header(model=name, corpus=parallel.name, n_sentences=len(parallel), languages=parallel.languages,
                   pivot=pivot, pooling=pooling)  # fmt: skip
    lines += alignment_section(table[table["language"] != "all"], alignment)
    lines += language_specific_section(table, langid, neurons)
    if routing is not None:
        lines += routing_section(routing, divergence, usage_figure)
    lines += steering
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report


def evaluate_job(
    out: str | Path,
    *,
    model: str = "default",
    corpus: ParallelCorpus | str = "demo",
    pivot: str = "eng",
    methods: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    n_loss: int = 32,
    n_prompts: int = 8,
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """``xlalign evaluate``: the closed loop for every non-pivot language of the corpus; returns report.md."""
    out, parallel, network, tokenizer = _start(out, _EVALUATION_OUTPUTS | {"report.md"}, corpus, pivot, model)
    languages = [lang for lang in parallel.languages if lang != pivot]
    steering, _ = closed_loop(network, tokenizer, parallel, out, languages=languages, pivot=pivot, methods=methods,
                              test_fraction=test_fraction, n_loss=n_loss, n_prompts=n_prompts, batch_size=batch_size,
                              progress=progress)  # fmt: skip
    lines = header(model=str(network.config.name_or_path), corpus=parallel.name, n_sentences=len(parallel),
                   languages=parallel.languages, pivot=pivot, pooling="mean") + steering  # fmt: skip
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report


def closed_loop(
    model, tokenizer, parallel: ParallelCorpus, out: Path, *, languages: Sequence[str], pivot: str,
    methods: Sequence[str] | None, test_fraction: float, n_loss: int, n_prompts: int, batch_size: int, progress: bool,
    n_generations: int = 2,
) -> tuple[list[str], str | None]:  # fmt: skip
    """Fit on the training split, evaluate on the test split, write evaluation.csv, figures and generations.
    Returns the report section and the LAPE figure's markdown (if LAPE ran)."""
    train, test = parallel.split(test_fraction=test_fraction)
    methods = available_methods(model) if methods is None else methods
    found = fit_methods(model, tokenizer, train, languages=languages, pivot=pivot, methods=methods,
                        lape_languages=train.languages, batch_size=batch_size, progress=progress)  # fmt: skip
    grid = settings(found, pivot=pivot)
    identifier = LanguageIdentifier().fit(train)
    evaluation = evaluate(model, tokenizer, test, grid, languages=languages, pivot=pivot, identifier=identifier,
                          n_loss=n_loss, n_prompts=n_prompts, batch_size=batch_size, progress=progress)  # fmt: skip
    write_text(out / "evaluation.csv", evaluation.to_csv(index=False))
    best = best_settings(evaluation).sort_values("gain").iloc[-1]
    chosen = next(s for s in grid if (s.method, s.setting) == (best["method"], best["setting"]))
    generations = _generations(model, tokenizer, test, chosen, languages, n_generations)
    write_text(out / "generations.csv", generations.to_csv(index=False))
    figures = {
        "before_after": save_figure(before_after(evaluation), out / "before_after.png"),
        "pareto": save_figure(pareto(evaluation), out / "pareto.png"),
    }
    neurons = None
    if found.lape is not None:
        neurons = save_figure(neurons_per_layer(found.lape.count_per_layer(), "LAPE neurons per layer"), out / "lape_neurons.png")
    section = steering_section(evaluation, figures, generations, n_test=len(test), pivot=pivot)
    return section, neurons


def _generations(model, tokenizer, test: ParallelCorpus, setting, languages, n: int) -> pd.DataFrame:
    rows = []
    for lang in languages:
        prompts = test.texts(lang)[:n]
        off = continuations(model, tokenizer, prompts)
        with steer(model, setting.plan(lang), languages=lang):
            on = continuations(model, tokenizer, prompts)
        rows += [(lang, f"{setting.method}: {setting.setting}", p, a, b) for p, a, b in zip(prompts, off, on)]
    return pd.DataFrame(rows, columns=["language", "setting", "prompt", "off", "on"])
