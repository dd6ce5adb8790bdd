"""Fit a :class:`~probes.artifacts.LanguageDetector`: the model's own language identification at an early layer,
for gating steering on the language the model itself detects (no language argument at generation time)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from probes.analysis.activations import Activations
from probes.analysis.langid import language_id_scores, probe_pipeline
from probes.artifacts.detector import LanguageDetector
from probes.find.errors import FinderError


def fit_detector(
    activations: Activations,
    layer: int,
    *,
    languages: Sequence[str] | None = None,
    component: str = "resid",
    C: float = 1.0,
    max_iter: int = 2000,
    params: dict | None = None,
) -> LanguageDetector:
    """A standardised logistic regression over ``languages`` (default: all of ``activations``') on the pooled
    activations at ``Site(layer, component)``, exported as tensors."""
    chosen = list(languages or activations.languages)
    if len(chosen) < 2:
        raise FinderError(f"a language detector needs at least two languages; got {chosen}")
    ((_, by_language),) = activations.by_layer(component, chosen, [layer])
    x = torch.cat([by_language[lang] for lang in chosen]).double().numpy()
    y = np.repeat(np.arange(len(chosen)), [len(by_language[lang]) for lang in chosen])
    pipeline = probe_pipeline(C, max_iter).fit(x, y)
    scaler, regression = pipeline[0], pipeline[-1]
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return LanguageDetector(
        layer,
        component,
        activations.pooling or "mean",
        tuple(chosen),
        as_tensor(scaler.mean_),
        as_tensor(scaler.scale_),
        as_tensor(regression.coef_),
        as_tensor(regression.intercept_),
        {"C": C, "sentences_per_language": len(activations), **(params or {})},
        dict(activations.model),
    )


def earliest_detector(
    activations: Activations,
    layers: Sequence[int],
    *,
    languages: Sequence[str] | None = None,
    component: str = "resid",
    accuracy: float = 0.95,
    cv: int = 5,
) -> LanguageDetector:
    """The detector at the first of ``layers`` whose cross-validated accuracy reaches ``accuracy`` (else at the
    most accurate one): the earliest layer that knows the language well, so edits after it can be gated."""
    chosen = list(languages or activations.languages)
    scores = {}
    for layer, by_language in activations.by_layer(component, chosen, sorted(layers)):
        scores[layer], _ = language_id_scores(
            {lang: by_language[lang] for lang in chosen}, cv=cv, where=f"detector at layer {layer}"
        )
        if scores[layer] >= accuracy:
            break
    layer = next((layer for layer, score in scores.items() if score >= accuracy), max(scores, key=scores.get))
    return fit_detector(
        activations, layer, languages=chosen, component=component, params={"cv_accuracy": scores[layer]}
    )
