"""The closed loop in memory: split, fit every method, evaluate every setting on the held-out split and return
the tables (:func:`evaluate_methods`); ``xlalign evaluate`` and ``run`` (:mod:`xlalign.closed_loop`) write the same
tables to files, resumably."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import pandas as pd

from probes.capture.bundle import takes_bundle
from probes.analysis import OutputLanguage
from probes.capture import Tokenization
from probes.data import ParallelCorpus
from probes.model import Loading, has_lm_head
from steer.apply import steer
from steer.choices import INCLINE_SIGMAS
from steer.evaluate import Setting, continuations, evaluate as evaluate_settings, gated_by_detection
from steer.methods import Findings, fit_methods, incline_grid, settings
from steer.summary import best_settings
from xlalign.choices import LOSS_SENTENCES, PROMPTS
from xlalign.errors import JobError, notice
from xlalign.jobs import open_corpus, open_model
from xlalign.loop_options import corpus_language, loop_options


@dataclass
class Fitted:
    """The methods fitted on the training split and the settings to evaluate on the held-out one."""

    train: ParallelCorpus
    test: ParallelCorpus
    findings: Findings
    settings: list[Setting]
    notes: list[str]


@dataclass
class LoopResult(Fitted):
    """What :func:`evaluate_methods` measured: ``evaluation`` (one row per setting, language, layer and metric:
    :data:`steer.evaluate.COLUMNS`) and ``generations`` (continuations of the best setting, off and on)."""

    evaluation: pd.DataFrame | None = None
    generations: pd.DataFrame | None = None

    @cached_property
    def best(self) -> pd.DataFrame:
        """Each setting's summary: mean MEXA gain, loss change, fidelity and the goal check (best first)."""
        return best_settings(self.evaluation).sort_values("gain", ascending=False)


def open_loop(model, tokenizer, corpus, pivot: str, loading: Loading = Loading(), **options):
    """Every input of the closed loop checked before any work: the corpus, the pivot (in it), the model (with an
    LM head) and ``options`` (:func:`xlalign.loop_options.loop_options`). Returns ``(corpus, pivot, model,
    tokenizer, options)``."""
    parallel = open_corpus(corpus)
    pivot = corpus_language(pivot, parallel, "pivot")
    network, tokenizer = open_model(model, tokenizer, loading)
    if not has_lm_head(network):
        raise JobError(f"{type(network).__name__} has no LM head: the closed loop measures loss and generates")
    return parallel, pivot, network, tokenizer, loop_options(network, parallel, pivot, **options)


def fit_loop(
    model,
    tokenizer,
    parallel: ParallelCorpus,
    *,
    languages: Sequence[str],
    pivot: str,
    methods: Sequence[str] | None,
    test_fraction: float,
    tokenization: Tokenization,
    progress,
    incline_sigmas: Sequence[float] = INCLINE_SIGMAS,
    sweep: bool = False,
    gate_by_detection: bool = False,
) -> Fitted:
    """Split ``parallel`` by document, fit ``methods`` on the training split and build the settings (with the
    detection-gated twins under ``gate_by_detection``); each note is also given as a :class:`probes.errors.Notice`."""
    train, test = parallel.split(test_fraction=test_fraction)
    notes = [split_note(parallel, test, test_fraction)]
    found = fit_methods(
        model,
        tokenizer,
        train,
        languages=languages,
        pivot=pivot,
        methods=methods,
        lape_languages=train.languages,
        detect=gate_by_detection,
        tokenization=tokenization,
        progress=progress,
    )
    grid = settings(
        found,
        model,
        tokenizer,
        pivot=pivot,
        incline_settings=incline_grid(incline_sigmas),
        tokenization=tokenization,
        sweep=sweep,
    )
    if found.detector is not None:
        twins = gated_by_detection(grid, found.detector.layer)
        notes.append(ungated_note([s for s in grid if s.layer <= found.detector.layer], found.detector.layer))
        grid += twins
    notes = [note for note in notes if note]
    for note in notes:
        notice(note)
    return Fitted(train, test, found, grid, notes)


def split_note(parallel: ParallelCorpus, test: ParallelCorpus, test_fraction: float) -> str | None:
    """A note when whole documents kept the held-out share far (more than 0.1) from ``test_fraction``."""
    share = len(test) / len(parallel)
    if abs(share - test_fraction) <= 0.1:
        return None
    return (
        f"the split holds out {len(test)} of {len(parallel)} sentences ({share:.0%}), not the {test_fraction:.0%} "
        f"asked for: it keeps whole documents on one side, and this corpus has few, long ones. Use more "
        f"sentences (--max-sentences) for a split closer to --test-fraction."
    )


def ungated_note(chosen: Sequence[Setting], detector_layer: int) -> str | None:
    """A note naming the settings that edit at or before the detector's layer, which get no detection-gated twin."""
    if not chosen:
        return None
    names = ", ".join(dict.fromkeys(f"{s.method} ({s.setting})" for s in chosen))
    return (
        f"--gate-by-detection: no detection-gated setting for {names}: each edits at or before layer "
        f"{detector_layer}, where the model's language is detected, so it cannot be gated on that detection."
    )


def generations(
    model,
    tokenizer,
    test: ParallelCorpus,
    setting: Setting,
    languages: Sequence[str],
    n: int,
    tokenization: Tokenization,
    detector=None,
) -> pd.DataFrame:
    """Greedy continuations of the first ``n`` held-out sentences of each language, without and with ``setting``."""
    rows = []
    for lang in languages:
        prompts = test.texts(lang)[:n]
        off = continuations(model, tokenizer, prompts, tokenization=tokenization)
        with steer(model, setting.plan(lang, prompts), languages=detector if setting.detected else lang):
            on = continuations(model, tokenizer, prompts, tokenization=tokenization)
        rows += [(lang, f"{setting.method}: {setting.setting}", p, a, b) for p, a, b in zip(prompts, off, on)]
    return pd.DataFrame(rows, columns=["language", "setting", "prompt", "off", "on"])


def best_setting(evaluation: pd.DataFrame, grid: Sequence[Setting]) -> Setting:
    """The setting of ``grid`` with the largest mean MEXA gain."""
    best = best_settings(evaluation).sort_values("gain").iloc[-1]
    return next(s for s in grid if (s.method, s.setting) == (best["method"], best["setting"]))


@takes_bundle
def evaluate_methods(
    model="default",
    tokenizer=None,
    corpus: ParallelCorpus | str = "demo",
    *,
    pivot: str = "eng",
    languages: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    n_loss: int = LOSS_SENTENCES,
    n_prompts: int = PROMPTS,
    n_translations: int = 0,
    incline_sigmas: Sequence[float] = INCLINE_SIGMAS,
    sweep: bool = False,
    gate_by_detection: bool = False,
    pooling: str = "weighted",
    n_generations: int = 2,
    tokenization: Tokenization = Tokenization(),
    progress: bool = False,
) -> LoopResult:
    """The closed loop of ``xlalign evaluate`` in memory, nothing written: fit ``methods`` (default: those that
    apply) on a document split of ``corpus``, evaluate each setting for ``languages`` (default: every non-pivot
    language) on the held-out split, alignment pooled with ``pooling``; returns the tables."""
    parallel, pivot, network, tokenizer, options = open_loop(
        model,
        tokenizer,
        corpus,
        pivot,
        methods=methods,
        test_fraction=test_fraction,
        n_loss=n_loss,
        n_prompts=n_prompts,
        n_translations=n_translations,
        incline_sigmas=incline_sigmas,
        steer_langs=languages,
        pooling=pooling,
    )
    chosen = options["steer_langs"] or [lang for lang in parallel.languages if lang != pivot]
    fitted = fit_loop(
        network,
        tokenizer,
        parallel,
        languages=chosen,
        pivot=pivot,
        methods=options["methods"],
        test_fraction=test_fraction,
        tokenization=tokenization,
        progress=progress,
        incline_sigmas=options["incline_sigmas"],
        sweep=sweep,
        gate_by_detection=gate_by_detection,
    )
    evaluation = evaluate_settings(
        network,
        tokenizer,
        fitted.test,
        fitted.settings,
        languages=chosen,
        pivot=pivot,
        fidelity=OutputLanguage(),
        detector=fitted.findings.detector,
        n_loss=n_loss,
        n_prompts=n_prompts,
        n_translations=n_translations,
        tokenization=tokenization,
        pooling=pooling,
        progress=progress,
    )
    shown = generations(
        network,
        tokenizer,
        fitted.test,
        best_setting(evaluation, fitted.settings),
        chosen,
        n_generations,
        tokenization,
        fitted.findings.detector,
    )
    return LoopResult(fitted.train, fitted.test, fitted.findings, fitted.settings, fitted.notes, evaluation, shown)
