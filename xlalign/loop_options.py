"""The options of ``run`` and ``evaluate``, checked before anything is fitted or written.

Every number is checked for range, every language code normalised (:func:`probes.data.normalize_language`) and
found in the corpus, and every method checked against the model and its backend, so a bad option fails at once
with the option's name, never after minutes of fitting and never leaving a half-written ``--out``.
"""

from __future__ import annotations

import math
from typing import Sequence

from probes.capture import POOLINGS
from probes.data import CorpusError, ParallelCorpus, normalize_language
from steer.methods import available_methods, canonical, names, unavailable_methods
from xlalign.errors import JobError


def corpus_language(code: str, corpus: ParallelCorpus, option: str) -> str:
    """``code`` in the project's scheme (``de``, ``DEU``, ``deu_Latn`` -> ``deu``), which must be in ``corpus``."""
    try:
        language = normalize_language(code)
    except CorpusError as error:
        raise JobError(f"{option}: {error}") from None
    if language not in corpus.languages:
        spelled = "" if language == code else f" (= {language!r})"
        raise JobError(
            f"{option} language {code!r}{spelled} is not among the corpus languages {', '.join(corpus.languages)}"
        )
    return language


def _at_least(option: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise JobError(f"{option} must be an integer >= {least}, got {value!r}")
    return value


def loop_options(
    model,
    corpus: ParallelCorpus,
    pivot: str,
    *,
    methods: Sequence[str] | None,
    test_fraction: float,
    n_loss: int,
    n_prompts: int,
    n_translations: int,
    incline_sigmas: Sequence[float],
    steer_langs: Sequence[str] | None = None,
    pooling: str | None = None,
    **passed,
) -> dict:
    """The checked options (methods resolved: default, all that apply to ``model`` and its backend), JSON-ready;
    ``passed`` (flags such as ``sweep``) are kept as they are."""
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise JobError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    options = dict(
        test_fraction=float(test_fraction),
        n_loss=_at_least("--loss-sentences", n_loss, 1),
        n_prompts=_at_least("--prompts", n_prompts, 1),
        n_translations=_at_least("--translations", n_translations, 0),
    )
    sigmas = [float(sigma) for sigma in incline_sigmas]
    if not all(math.isfinite(sigma) for sigma in sigmas):
        raise JobError(f"--incline-sigmas must be finite numbers, got {sigmas}")
    options["incline_sigmas"] = sigmas
    if pooling is not None and pooling not in POOLINGS:
        raise JobError(f"--pooling {pooling!r}: choose from {', '.join(POOLINGS)}")
    options["pooling"] = pooling
    if steer_langs is not None:
        chosen = [corpus_language(code, corpus, "--steer-langs") for code in steer_langs]
        if pivot in chosen:
            raise JobError(f"--steer-langs names the pivot {pivot!r}: the pivot is what the others are steered towards")
        steer_langs = list(dict.fromkeys(chosen))
    options["steer_langs"] = steer_langs
    options["methods"] = _methods(model, methods)
    return {**options, **passed}


def _methods(model, methods: Sequence[str] | None) -> list[str]:
    if methods is None:
        applicable = available_methods(model)
        if not applicable:
            raise JobError("no steering method applies to this model and backend; see --methods")
        return applicable
    methods = list(dict.fromkeys(canonical(method) for method in methods))
    unknown = [method for method in methods if method not in names()]
    if unknown or not methods:
        raise JobError(f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(names())}")
    impossible = unavailable_methods(model, methods)
    if impossible:
        reasons = "; ".join(f"{method}: {why}" for method, why in impossible.items())
        raise JobError(
            f"--methods: {reasons}. Choose others with --methods (these can run: {', '.join(available_methods(model))})"
        )
    return methods
