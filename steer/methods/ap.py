"""AP experts (Kojima et al., Suau et al.): the units whose response best separates a language's sentences from
the others' (average precision); the closed loop sets the pivot's experts to their median response.

Options: ``ap_k`` units per language (default 100 in the closed loop), ``ap_bottom_k`` of lowest AP,
``ap_components`` (default ``mlp_act``; several are ranked together), ``ap_pooling`` (``mean`` as Kojima et
al., ``max`` as Suau et al.), ``ap_languages`` (default: the pivot and the fitted languages)."""

from __future__ import annotations

from probes.find import APExperts
from steer.convert import set_neurons
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.schedule import gated

CLOSED_LOOP_K = 100


def _components(training: Training) -> list[str]:
    return list(training.option("ap_components", ["mlp_act"]))


def fit(training: Training) -> dict:
    """``{component: NeuronSet}``, one per component of ``ap_components``."""
    experts = APExperts(
        k=training.option("ap_k", CLOSED_LOOP_K),
        bottom_k=training.option("ap_bottom_k", 0),
        pooling=training.option("ap_pooling", "mean"),
    )
    languages = list(training.option("ap_languages", training.everyone))
    return experts.fit(training.acts, _components(training), languages).neuron_sets_


def needs(training: Training) -> list[Need]:
    return [
        Need(
            component,
            training.every_layer,
            pooling=training.option("ap_pooling", "mean"),
            languages=training.option("ap_languages"),
        )
        for component in _components(training)
    ]


def settings(sets: dict, grid: Grid) -> list[Setting]:
    experts = set_neurons(sets["mlp_act"], grid.pivot)
    return [
        Setting(
            "ap",
            f"set {grid.pivot} experts to on_p50",
            min(experts.layers),
            lambda lang, texts: [(experts, gated([lang]))],
        )
    ]


METHOD = Method(
    "ap",
    "AP experts: set the pivot's expert units to their median response",
    "mlp_act",
    fit,
    settings,
    needs=needs,
    finds="neurons",
    options=("ap_k", "ap_bottom_k", "ap_components", "ap_pooling", "ap_languages"),
)
