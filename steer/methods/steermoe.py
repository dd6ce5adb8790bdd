"""SteerMoE: force the experts the pivot uses more than the language, ban those it uses less, by the risk
difference of token-level top-k routing (BOS fed but not counted, as its released code)."""

from __future__ import annotations

from dataclasses import replace

from probes.analysis import risk_difference
from probes.capture import trace_router
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Training
from steer.router import steermoe_experts
from steer.schedule import gated


def fit(training: Training) -> dict:
    """``{"risk": {language: {layer: pivot minus language}}, "experts_per_token": k}``."""
    training.progress.set_description("fit: SteerMoE routing")
    content = replace(training.tokenization, exclude_bos=True)
    routed = {
        lang: trace_router(training.model, training.tokenizer, training.train.texts(lang), tokenization=content)
        for lang in training.everyone
    }
    pivot = routed[training.pivot]
    k = int(next(iter(pivot.ids.values())).shape[1])
    risk = {
        lang: {layer: risk_difference(pivot.probs[layer], routed[lang].probs[layer], k) for layer in pivot.layers}
        for lang in training.languages
    }
    return {"risk": risk, "experts_per_token": k}


def edits(found: dict, language: str) -> list:
    """SteerMoE for ``language``: as many experts forced and banned as there are routed layers (fewer if the risk
    differences have fewer of a sign)."""
    risk = found["risk"][language]
    n_positive = sum(int((values > 0).sum()) for values in risk.values())
    n_negative = sum(int((values < 0).sum()) for values in risk.values())
    return steermoe_experts(
        risk, n_force=min(len(risk), n_positive), n_ban=min(len(risk), n_negative), k=found["experts_per_token"]
    )


def settings(found: dict, grid: Grid) -> list[Setting]:
    layers = sorted(next(iter(found["risk"].values())))
    return [
        Setting(
            "steermoe",
            f"force and ban {len(layers)} experts each by risk difference",
            layers[0],
            lambda lang, texts: [(edit, gated([lang])) for edit in edits(found, lang)],
        )
    ]


METHOD = Method(
    "steermoe",
    "SteerMoE: force and ban experts by risk difference",
    "router",
    fit,
    settings,
    unsaved="its risk differences have no artifact type yet: evaluate it with `xlalign evaluate --methods steermoe`",
)
