"""LAPE (Tang et al.): language-specific neurons by activation-probability entropy over the ``lape_languages``
(default: the pivot and the fitted languages; more languages make the entropy more telling); the closed loop
zeroes the language's own neurons."""

from __future__ import annotations

from probes.find import LAPE
from steer.convert import zero_neurons
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.schedule import gated


def _languages(training: Training) -> list[str]:
    return list(training.option("lape_languages", training.everyone))


def fit(training: Training):
    return LAPE().fit(training.tokens["mlp_gate"], languages=_languages(training)).neurons_


def settings(neurons, grid: Grid) -> list[Setting]:
    return [
        Setting(
            "lape",
            "zero own neurons",
            1,
            lambda lang, texts: [(zero_neurons(neurons, lang), gated([lang]))] if lang in neurons.languages else [],
        )
    ]


METHOD = Method(
    "lape",
    "LAPE: zero the language's own MLP neurons",
    "mlp_gate",
    fit,
    settings,
    needs=lambda training: [Need("mlp_gate", training.every_layer, tokens=True, languages=_languages(training))],
    finds="neurons",
    options=("lape_languages",),
)
