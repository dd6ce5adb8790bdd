"""CLAIM (our reading of the paper): per-head probes, the most language-specific heads shifted by their
pivot-minus-language mean output. The closed loop probes the middle third of the layers; ``claim_layers``
chooses others (``xlalign find`` probes every layer). ``n_heads``: heads kept (default 8)."""

from __future__ import annotations

from probes.find import HeadProbe
from steer.choices import CLAIM_HEADS
from steer.convert import head_shift
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.schedule import gated


def fit(training: Training) -> dict:
    k = training.option("n_heads", CLAIM_HEADS)
    return {
        lang: HeadProbe().fit(training.acts, lang, pivot=training.pivot).shift_vector(k) for lang in training.languages
    }


def settings(vectors: dict, grid: Grid) -> list[Setting]:
    first = min(vectors[next(iter(vectors))].layers)
    return [
        Setting(
            "claim", "top heads,alpha=1.0", first, lambda lang, texts: [(head_shift(vectors[lang], 1.0), gated([lang]))]
        )
    ]


METHOD = Method(
    "claim",
    "CLAIM: shift the most language-specific attention heads",
    "head",
    fit,
    settings,
    needs=lambda training: [Need("head", training.option("claim_layers", training.middle))],
    finds="shift",
    options=("n_heads", "claim_layers"),
)
