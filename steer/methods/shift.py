"""Shift vectors added at one layer: the pivot-minus-language mean (``shift``), the first principal direction of
the paired differences (``pca``) and a logistic probe's normal (``logistic``), from mean-pooled ``resid``."""

from __future__ import annotations

from probes.find import fit_shift
from steer.convert import add_vector
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.schedule import gated


def _record(name: str, summary: str, default: bool) -> Method:
    def fit(training: Training) -> dict:
        return {
            lang: fit_shift(training.acts, lang, pivot=training.pivot, method="mean" if name == "shift" else name)
            for lang in training.languages
        }

    def settings(vectors: dict, grid: Grid) -> list[Setting]:
        return [
            Setting(
                name,
                f"layer={grid.middle},alpha={alpha}",
                grid.middle,
                lambda lang, texts, alpha=alpha: [(add_vector(vectors[lang], alpha, [grid.middle]), gated([lang]))],
            )
            for alpha in (0.5, 1.0)
        ]

    return Method(
        name,
        summary,
        "resid",
        fit,
        settings,
        needs=lambda training: [Need("resid", training.every_layer)],
        finds="shift",
        default=default,
    )


SHIFT = _record("shift", "mean shift vector (pivot mean minus language mean) added at the middle layer", True)
PCA = _record("pca", "first principal direction of the paired differences, added at the middle layer", False)
LOGISTIC = _record("logistic", "normal of a logistic probe separating the pair, added at the middle layer", False)
