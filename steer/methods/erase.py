"""LEACE erasure of the linear language information, fitted on the pivot and every fitted language; applied to
the language and the pivot alike (:mod:`steer.keeping`)."""

from __future__ import annotations

from probes.find import fit_eraser
from steer.keeping import erase_settings, profile_layers
from steer.methods.record import Grid, Method, Need, Training


def fit(training: Training):
    peak = profile_layers(training.profile)[0]
    return fit_eraser(
        training.acts, languages=training.everyone, layers=list(training.every_layer)[:-1], recommended=(peak,)
    )


def settings(eraser, grid: Grid) -> list:
    return erase_settings(eraser, grid.findings.profile, pivot=grid.pivot, sweep=grid.sweep)


METHOD = Method(
    "erase",
    "LEACE: erase the language concept at the most aligned layer (pivot erased too)",
    "resid",
    fit,
    settings,
    needs=lambda training: [Need("resid", training.every_layer)],
    finds="eraser",
    profile=True,
)
