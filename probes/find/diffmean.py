"""DiffMean directions as CLaS-Bench computes them (Gurgurov et al. 2026, code d-gurgurov/CLaS-Bench:
identification/diffmean.py and 2-diffmean_generate.py).

Per layer, the mean of the residual stream over every token of a language's text (a token-weighted mean over
the corpus, not a mean of sentence means); the direction from language ``l`` to the target is target mean minus
``l`` mean, divided by its L2 norm; steering adds ``alpha`` times that unit vector to every token (prompt and
generated) at one layer. Here the target is the pivot, so the vector points from ``l`` towards it. The BOS token
is left out of the means (its activation is the same in every language; CLaS-Bench feeds raw token streams).
"""

from __future__ import annotations

from typing import Sequence

from probes.analysis.activations import check_finite
from probes.artifacts.shift_vector import ShiftVector
from probes.find.errors import FinderError


def fit_diffmean(
    stats,
    language: str,
    *,
    pivot: str = "eng",
    layers: Sequence[int],
    component: str = "resid",
    recommended: Sequence[int] = (),
) -> ShiftVector:
    """Unit DiffMean vectors from ``language`` towards ``pivot`` at ``layers``, from token statistics
    (:class:`probes.capture.NeuronStats` with both languages added at ``Site(layer, component)``)."""
    sites = {site.layer: site for site in stats.sites if site.component == component}
    missing = sorted(set(layers) - set(sites))
    if missing:
        raise FinderError(f"DiffMean at {component} layers {missing}: the statistics hold layers {sorted(sites)}")
    vectors, gaps = {}, {}
    for layer in layers:
        site = sites[layer]
        dtype = (stats.model or {}).get("dtype")
        ours = check_finite(stats.mean(site, pivot), site, pivot, dtype=dtype, where="DiffMean")
        theirs = check_finite(stats.mean(site, language), site, language, dtype=dtype, where="DiffMean")
        difference = ours.double() - theirs.double()
        norm = difference.norm()
        if norm == 0:
            raise FinderError(f"{site}: {language} and {pivot} have the same token mean; DiffMean has no direction")
        vectors[layer] = (difference / norm).float()
        gaps[layer] = norm.item()
    params = {"unit": True, "means": "token", "gap_norms": {str(layer): gap for layer, gap in gaps.items()}}
    return ShiftVector(
        vectors, component, pivot, language, "diffmean", params, dict(stats.model or {}), tuple(recommended)
    )


def gap_norm(shift: ShiftVector, layer: int) -> float:
    """The length of the mean difference a DiffMean unit vector was normalised from (to choose ``alpha``)."""
    return float(shift.params["gap_norms"][str(layer)])
