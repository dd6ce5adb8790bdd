"""The sandwich (ITLC-style): DiffMean or LEACE at the most aligned layer, the language's own direction
re-injected where alignment falls again (:mod:`steer.keeping`)."""

from __future__ import annotations

from steer.keeping import sandwich_settings
from steer.methods import diffmean, erase
from steer.methods.record import Grid, Method, Training


def fit(training: Training) -> dict:
    return {"diffmean": diffmean.fit(training), "eraser": erase.fit(training)}


def settings(found: dict, grid: Grid) -> list:
    return sandwich_settings(
        found["diffmean"], found["eraser"], grid.findings.profile, pivot=grid.pivot, sweep=grid.sweep
    )


METHOD = Method(
    "sandwich",
    "align at the most aligned layer, restore the language's direction later",
    "resid",
    fit,
    settings,
    needs=lambda training: [*diffmean.needs(training), *erase.METHOD.needs(training)],
    unsaved="a sandwich is two edits of the DiffMean vectors: `find --method diffmean` writes them, and "
    "`xlalign steer` applies one at a time",
    profile=True,
)
