"""DiffMean (CLaS-Bench): the unit difference of token means, added with strength alpha at every token of one
layer (:mod:`steer.keeping` chooses the layers and strengths)."""

from __future__ import annotations

from probes.find import fit_diffmean
from steer.keeping import diffmean_settings, profile_layers
from steer.methods.record import Grid, Method, Need, Training


def fit(training: Training) -> dict:
    peak = profile_layers(training.profile)[0]
    return {
        lang: fit_diffmean(
            training.tokens["resid"], lang, pivot=training.pivot, layers=training.every_layer, recommended=(peak,)
        )
        for lang in training.languages
    }


def needs(training: Training) -> list[Need]:
    return [Need("resid", training.every_layer, tokens=True)]


def settings(vectors: dict, grid: Grid) -> list:
    return diffmean_settings(vectors, grid.findings.profile, sweep=grid.sweep)


METHOD = Method(
    "diffmean",
    "DiffMean (CLaS-Bench): unit difference of token means, at the most aligned layer",
    "resid",
    fit,
    settings,
    needs=needs,
    finds="shift",
    profile=True,
)
