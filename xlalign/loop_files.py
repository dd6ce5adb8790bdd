"""The closed loop written to files for ``run`` and ``evaluate``: evaluation.csv (resumable), generations.csv, the
figures and the report section (:func:`xlalign.loop.evaluate_methods` keeps the same tables in memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from probes.analysis import OutputLanguage
from probes.capture import Tokenization
from probes.data import ParallelCorpus
from probes.data.files import write_text
from probes.model import model_identity
from probes.plots import neurons_per_layer
from steer.evaluate import evaluate as evaluate_settings
from steer.choices import INCLINE_SIGMAS
from steer.summary import before_after, pareto
from xlalign.loop import best_setting, fit_loop, generations
from xlalign.resume import ResumableTable
from xlalign.report import save_figure, steering_section


def closed_loop(
    model,
    tokenizer,
    parallel: ParallelCorpus,
    out: Path,
    *,
    languages: Sequence[str],
    pivot: str,
    methods: Sequence[str] | None,
    test_fraction: float,
    n_loss: int,
    n_prompts: int,
    tokenization: Tokenization,
    progress,
    incline_sigmas: Sequence[float] = INCLINE_SIGMAS,
    n_generations: int = 2,
    sweep: bool = False,
    gate_by_detection: bool = False,
    n_translations: int = 0,
    pooling: str = "weighted",
) -> tuple[list[str], str | None]:
    """:func:`xlalign.loop.evaluate_methods` writing its tables: evaluation.csv, figures (and the data of the LAPE
    figure, lape_neurons.csv) and generations. evaluation.csv grows by each finished (language, setting); an
    interrupted evaluation with the same inputs resumes from it. Alignment is pooled with ``pooling`` (the report
    header's). Returns the report section and the LAPE figure's markdown (if LAPE ran)."""
    fitted = fit_loop(
        model,
        tokenizer,
        parallel,
        languages=languages,
        pivot=pivot,
        methods=methods,
        test_fraction=test_fraction,
        tokenization=tokenization,
        progress=progress,
        incline_sigmas=incline_sigmas,
        sweep=sweep,
        gate_by_detection=gate_by_detection,
    )
    found, grid, test = fitted.findings, fitted.settings, fitted.test
    table = ResumableTable(
        out / "evaluation.csv",
        {
            "model": model_identity(model)["weights_sha256"],
            "train": fitted.train.fingerprint(),
            "test": test.fingerprint(),
            "languages": list(languages),
            "pivot": pivot,
            "settings": [[s.method, s.setting] for s in grid],
            "n_loss": n_loss,
            "n_prompts": n_prompts,
            "n_translations": n_translations,
            "tokenization": tokenization.as_dict(),
            "pooling": pooling,
            "detector_layer": found.detector.layer if found.detector is not None else None,
        },
    )
    resumed = table.interrupted()
    finished = [resumed["rows"]] if resumed else []

    def keep(unit: pd.DataFrame) -> None:
        finished.append(unit)
        table.save(pd.concat(finished, ignore_index=True))

    evaluation = evaluate_settings(
        model,
        tokenizer,
        test,
        grid,
        languages=languages,
        pivot=pivot,
        fidelity=OutputLanguage(),
        detector=found.detector,
        n_loss=n_loss,
        n_prompts=n_prompts,
        n_translations=n_translations,
        tokenization=tokenization,
        pooling=pooling,
        done=resumed["rows"] if resumed else None,
        on_unit=keep,
        progress=progress,
    )
    table.finish(evaluation)
    shown = generations(
        model, tokenizer, test, best_setting(evaluation, grid), languages, n_generations, tokenization, found.detector
    )
    write_text(out / "generations.csv", shown.to_csv(index=False))
    figures = {
        "before_after": save_figure(before_after(evaluation), out / "before_after.png"),
        "pareto": save_figure(pareto(evaluation), out / "pareto.png"),
    }
    neurons = None
    if "lape" in found:
        counts = found["lape"].count_per_layer()
        write_text(out / "lape_neurons.csv", counts.to_csv(index=False))
        neurons = save_figure(neurons_per_layer(counts, "LAPE neurons per layer"), out / "lape_neurons.png")
    section = steering_section(evaluation, figures, shown, n_test=len(test), pivot=pivot)
    if fitted.notes:
        section[2:2] = [*(f"> Note: {note}" for note in fitted.notes), ""]
    return section, neurons
