"""An orthogonal (Procrustes) map of mean-pooled ``resid`` at the middle layer, applied fully interpolated."""

from __future__ import annotations

from probes.find import fit_map
from steer.convert import apply_map
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.schedule import gated


def fit(training: Training) -> dict:
    return {
        lang: fit_map(training.acts, lang, pivot=training.pivot, method="procrustes") for lang in training.languages
    }


def settings(maps: dict, grid: Grid) -> list[Setting]:
    middle = grid.middle
    return [
        Setting(
            "procrustes",
            f"layer={middle},interpolate,sigma=1.0",
            middle,
            lambda lang, texts: [(apply_map(maps[lang], 1.0, "interpolate", [middle]), gated([lang]))],
        )
    ]


METHOD = Method(
    "procrustes",
    "orthogonal map of the residual stream at the middle layer",
    "resid",
    fit,
    settings,
    needs=lambda training: [Need("resid", training.every_layer)],
    finds="map",
)
