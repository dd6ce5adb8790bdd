"""INCLINE: least-squares maps of MLP outputs fitted on its half code-switched pairs (passes of its own), applied
as its released code applies them: targets from a clean pass written at the last prompt token of every layer
(:mod:`steer.incline`)."""

from __future__ import annotations

from dataclasses import replace

from steer.errors import EvaluationError
from steer.evaluate import Setting
from steer.incline import fit_incline_maps, incline
from steer.methods.record import Grid, Method, Training


def fit(training: Training) -> dict:
    training.progress.set_description("fit: INCLINE pairs")
    return fit_incline_maps(
        training.model,
        training.tokenizer,
        training.train,
        training.languages,
        pivot=training.pivot,
        style=training.option("incline_style"),
        tokenization=training.tokenization,
        progress=training.progress,
    )


def settings(maps: dict, grid: Grid) -> list[Setting]:
    if grid.model is None or grid.tokenizer is None:
        raise EvaluationError("INCLINE settings need the model and tokenizer: each plan comes from a clean pass")

    def plan(lang, texts, mode, sigma):
        patch, schedule = incline(
            grid.model, grid.tokenizer, texts, maps[lang], sigma, mode=mode, tokenization=grid.tokenization
        )
        return [(patch, replace(schedule, only=(lang,)))]

    return [
        Setting(
            "incline",
            f"clean pass,last token,every layer,mode={mode},sigma={sigma}",
            1,
            lambda lang, texts, mode=mode, sigma=sigma: plan(lang, texts, mode, sigma),
        )
        for mode, sigma in grid.incline_settings
    ]


METHOD = Method(
    "incline",
    "INCLINE: least-squares maps of MLP outputs at the last prompt token of every layer",
    "mlp_out",
    fit,
    settings,
    finds="map",
    options=("incline_style",),
)
