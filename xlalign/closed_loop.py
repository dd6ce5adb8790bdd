"""The main jobs: ``run`` (capture -> measure -> find -> steer -> evaluate on held-out -> report.md with figures)
and ``evaluate`` (the closed loop alone). Both take a model spec or a model object with its tokenizer."""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import pandas as pd

from probes.analysis import expert_usage, measure, measure_routing, router_matrices
from probes.capture import Tokenization, capture_to_store
from probes.capture.distributed import alone, ranks
from probes.data import ParallelCorpus
from probes.data.files import write_text
from probes.model import Loading, Site, model_identity, n_layers, router_layers
from probes.plots import alignment_per_layer, divergence_heatmap, langid_per_layer, usage_heatmap
from steer.choices import INCLINE_SIGMAS
from xlalign.choices import LOSS_SENTENCES, PROMPTS
from xlalign.errors import JobError
from xlalign.loading import takes_loading
from xlalign.jobs import job_bar
from xlalign.loop import open_loop
from xlalign.loop_files import closed_loop
from xlalign.outdir import ResultDir
from xlalign.presets import takes_preset
from xlalign.report import alignment_section, header, language_specific_section, routing_section, save_figure

RUN_OUTPUTS = {
    "store",
    "metrics.csv",
    "alignment_per_layer.png",
    "langid_per_layer.png",
    "report.md",
    "routing_divergence.png",
    "expert_usage.png",
}
EVALUATION_OUTPUTS = {
    "evaluation.csv",
    ".evaluation.csv.resume.json",
    "generations.csv",
    "before_after.png",
    "pareto.png",
    "lape_neurons.png",
    "lape_neurons.csv",
}


def _start(
    job: str,
    out,
    outputs: set[str],
    options: dict,
    *,
    corpus,
    pivot: str,
    model,
    tokenizer,
    loading: Loading,
    overwrite: bool,
):
    """Check every input (corpus, pivot, model, ``options``), then claim ``out`` (nothing is written before all
    are good). Returns ``(result directory, corpus, pivot, model, tokenizer, complete)``: ``complete`` when
    ``out`` already holds this job with the same inputs, finished."""
    parallel, pivot, network, tokenizer, options = open_loop(model, tokenizer, corpus, pivot, loading, **options)
    settings = {
        **options,
        "pivot": pivot,
        "model": model_identity(network)["weights_sha256"],
        "corpus": parallel.fingerprint(),
        "dtype": loading.dtype,
        "backend": loading.backend,
    }
    result = ResultDir(Path(out), job, settings, outputs)
    state = {"complete": False}

    def claim() -> None:
        state["complete"] = result.check(overwrite)
        if not state["complete"]:
            result.start()

    ranks().on_main(claim)
    complete = ranks().gather(state["complete"])[0]
    return result, options, parallel, pivot, network, tokenizer, complete


def _command() -> str:
    return shlex.join(["xlalign", *sys.argv[1:]]) if Path(sys.argv[0]).name == "xlalign" else "(Python API)"


@takes_preset("run")
@takes_loading
def run(
    out: str | os.PathLike,
    *,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    pivot: str = "eng",
    pooling: str | None = None,
    steer_langs: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    n_loss: int = LOSS_SENTENCES,
    n_prompts: int = PROMPTS,
    n_translations: int = 0,
    incline_sigmas: Sequence[float] = INCLINE_SIGMAS,
    tokenization: Tokenization = Tokenization(),
    loading: Loading = Loading(),
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Measure alignment per layer for every language, then fit, steer and evaluate ``steer_langs``.

    Alignment is measured on ``hidden`` sites (``output_hidden_states``), pooled ``weighted`` as MEXA's
    released code (``pooling`` default; ``mean`` in MoE models, whose routing metrics average over tokens).
    ``steer_langs`` defaults to the three languages least aligned with the pivot (mean MEXA over layers).
    Rerunning the same job into ``out`` resumes it (or, finished, does nothing); ``out`` holding another job's
    results is refused unless ``overwrite``, which replaces them. Returns report.md.
    Under ``torchrun`` the capture is split across the ranks; the main rank does the rest alone.
    """
    raw = dict(
        methods=methods,
        test_fraction=test_fraction,
        n_loss=n_loss,
        n_prompts=n_prompts,
        n_translations=n_translations,
        incline_sigmas=incline_sigmas,
        steer_langs=steer_langs,
        pooling=pooling,
        tokenization=tokenization.as_dict(),
    )
    result, options, parallel, pivot, network, tokenizer, complete = _start(
        "run",
        out,
        RUN_OUTPUTS | EVALUATION_OUTPUTS,
        raw,
        corpus=corpus,
        pivot=pivot,
        model=model,
        tokenizer=tokenizer,
        loading=loading,
        overwrite=overwrite,
    )
    out = result.out
    if complete:
        return out / "report.md"
    steer_langs = options["steer_langs"]
    routed = router_layers(network)
    pooling = pooling or ("mean" if routed else "weighted")
    sites = [Site(layer, "hidden") for layer in range(n_layers(network) + 1)] + [
        Site(layer, "router") for layer in routed
    ]
    with job_bar(progress, f"run into {out}") as bar, ExitStack() as rest:
        store = capture_to_store(
            network, tokenizer, parallel, sites, out / "store", pooling=pooling, tokenization=tokenization, progress=bar
        )
        if not ranks().is_main:
            return out / "report.md"  # written by the main rank
        rest.enter_context(alone())
        bar.set_description("run: measuring alignment")
        table = measure(store, pivot=pivot, metrics="all", component="hidden")
        routing = measure_routing(store, pivot) if routed and pooling == "mean" else None
        write_text(out / "metrics.csv", pd.concat([table, routing]).to_csv(index=False))
        name = str(network.config.name_or_path)
        title = f"{name}: alignment with {pivot} ({pooling} pooling, {len(parallel)} sentences)"
        alignment = save_figure(
            alignment_per_layer(table, ("retrieval_top1", "mexa"), title=title), out / "alignment_per_layer.png"
        )
        langid = save_figure(langid_per_layer(table), out / "langid_per_layer.png")
        if steer_langs is None:
            mexa = table[table["metric"] == "mexa"].groupby("language")["value"].mean()
            steer_langs = mexa.sort_values().index[:3].tolist()
        steering, neurons = closed_loop(
            network,
            tokenizer,
            parallel,
            out,
            languages=steer_langs,
            pivot=pivot,
            methods=options["methods"],
            test_fraction=test_fraction,
            n_loss=n_loss,
            n_prompts=n_prompts,
            n_translations=n_translations,
            progress=bar,
            incline_sigmas=options["incline_sigmas"],
            tokenization=tokenization,
            pooling=pooling,
        )  # the header's pooling, for the steering evaluation too
    lines = header(
        model=name,
        corpus=parallel.name,
        n_sentences=len(parallel),
        languages=parallel.languages,
        pivot=pivot,
        pooling=pooling,
        command=command or _command(),
        dtype=network.dtype,
        sizes=(n_loss, n_prompts),
    )
    lines += alignment_section(table[table["language"] != "all"], alignment)
    lines += language_specific_section(table, langid, neurons)
    if routing is not None:
        divergence = save_figure(
            divergence_heatmap(routing, title=f"{name}: routing divergence from {pivot}"),
            out / "routing_divergence.png",
        )
        usage = expert_usage(router_matrices(store, "selected"))
        usage_figure = save_figure(usage_heatmap(usage, title="expert usage per language"), out / "expert_usage.png")
        lines += routing_section(routing, divergence, usage_figure)
    lines += steering
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    result.finish()
    return report


@takes_preset("evaluate")
@takes_loading
def evaluate(
    out: str | os.PathLike,
    *,
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    pivot: str = "eng",
    methods: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    n_loss: int = LOSS_SENTENCES,
    n_prompts: int = PROMPTS,
    n_translations: int = 0,
    incline_sigmas: Sequence[float] = INCLINE_SIGMAS,
    sweep: bool = False,
    gate_by_detection: bool = False,
    tokenization: Tokenization = Tokenization(),
    loading: Loading = Loading(),
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """The closed loop for every non-pivot language of the corpus; returns report.md. ``sweep``: the
    language-keeping methods over layers and strengths; ``gate_by_detection``: every setting that edits after
    the detector's layer also gated on the language the model itself detects (``,gate=detected``). ``out`` is
    claimed as by :func:`run` (resumed, already complete, or refused without ``overwrite``)."""
    if ranks().world > 1:
        raise JobError("evaluate does not split its work across processes: run it without torchrun")
    raw = dict(
        methods=methods,
        test_fraction=test_fraction,
        n_loss=n_loss,
        n_prompts=n_prompts,
        n_translations=n_translations,
        incline_sigmas=incline_sigmas,
        sweep=sweep,
        gate_by_detection=gate_by_detection,
        tokenization=tokenization.as_dict(),
    )
    result, options, parallel, pivot, network, tokenizer, complete = _start(
        "evaluate",
        out,
        EVALUATION_OUTPUTS | {"report.md"},
        raw,
        corpus=corpus,
        pivot=pivot,
        model=model,
        tokenizer=tokenizer,
        loading=loading,
        overwrite=overwrite,
    )
    out = result.out
    if complete:
        return out / "report.md"
    languages = [lang for lang in parallel.languages if lang != pivot]
    with job_bar(progress, f"evaluate into {out}") as bar:
        steering, _ = closed_loop(
            network,
            tokenizer,
            parallel,
            out,
            languages=languages,
            pivot=pivot,
            methods=options["methods"],
            test_fraction=test_fraction,
            n_loss=n_loss,
            n_prompts=n_prompts,
            n_translations=n_translations,
            incline_sigmas=options["incline_sigmas"],
            sweep=sweep,
            gate_by_detection=gate_by_detection,
            tokenization=tokenization,
            progress=bar,
        )
    lines = header(
        model=str(network.config.name_or_path),
        corpus=parallel.name,
        n_sentences=len(parallel),
        languages=parallel.languages,
        pivot=pivot,
        pooling="weighted",
        command=command or _command(),
        dtype=network.dtype,
        sizes=(n_loss, n_prompts),
    )
    report = out / "report.md"
    write_text(report, "\n".join(lines + steering))
    result.finish()
    return report
