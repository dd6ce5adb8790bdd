"""LEACE language erasure (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form"), fitted
with the EleutherAI ``concept-erasure`` package on pooled activations, the one-hot language as the concept.

After erasure no linear classifier predicts the language from the (pooled) representation better than a
constant one, on the data it was fitted on. The eraser is affine, so erasing every token and then mean- or
position-weighted pooling equals pooling then erasing: an eraser fitted on sentence vectors removes the
language from the sentence vectors the steered model produces at that layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from concept_erasure import LeaceFitter

from probes.analysis.activations import Activations
from probes.artifacts.eraser import Eraser
from probes.find.errors import FinderError


def leace_fitter(by_language: dict[str, torch.Tensor]) -> LeaceFitter:
    """The library's fitter on ``(n_l, d)`` rows per language (float64), the one-hot language as the concept."""
    languages = list(by_language)
    x = torch.cat([by_language[lang] for lang in languages]).double()
    labels = torch.cat([torch.full((len(by_language[lang]),), i) for i, lang in enumerate(languages)])
    return LeaceFitter.fit(x, torch.nn.functional.one_hot(labels, len(languages)).double())


def fit_eraser(
    activations: Activations,
    *,
    languages: Sequence[str] | None = None,
    component: str = "resid",
    layers: Sequence[int] | None = None,
    recommended: Sequence[int] = (),
) -> Eraser:
    """One LEACE eraser per layer of ``component`` (all of ``activations``' layers unless ``layers``), fitted on
    the sentences of ``languages`` (default: every language of ``activations``)."""
    chosen = list(languages or activations.languages)
    if len(chosen) < 2:
        raise FinderError(f"erasing the language needs at least two languages; got {chosen}")
    left, right, bias = {}, {}, {}
    for layer, by_language in activations.by_layer(component, chosen, layers):
        eraser = leace_fitter(dict(by_language)).eraser
        left[layer], right[layer], bias[layer] = (
            eraser.proj_left.float(),
            eraser.proj_right.float(),
            eraser.bias.float(),
        )
    params = {"method": "leace", "pooling": activations.pooling, "sentences_per_language": len(activations)}
    return Eraser(left, right, bias, component, tuple(chosen), params, dict(activations.model), tuple(recommended))
