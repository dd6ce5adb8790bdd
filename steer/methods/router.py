"""Router steering (Bandarkar et al.): promote the pivot's most used experts in the middle MoE layers."""

from __future__ import annotations

from probes.model import ROUTER_CHANNELS, Site, router_layers
from steer.evaluate import Setting
from steer.methods.record import Grid, Method, Need, Training
from steer.router import promote_pivot_experts
from steer.schedule import gated


def fit(training: Training) -> dict:
    """The pivot's mean expert usage per routed layer."""
    selected = ROUTER_CHANNELS.index("selected")
    return {
        layer: training.acts.get(Site(layer, "router"), training.pivot)[:, selected].mean(0)
        for layer in router_layers(training.model)
    }


def settings(usage: dict, grid: Grid) -> list[Setting]:
    promote = promote_pivot_experts(usage, n_experts=2, delta=2.0)
    layers = "-".join(map(str, promote.layers))
    return [
        Setting(
            "router",
            f"promote top-2 {grid.pivot} experts,layers={layers},delta=2.0",
            min(promote.layers),
            lambda lang, texts: [(promote, gated([lang]))],
        )
    ]


METHOD = Method(
    "router",
    "promote the pivot's most used experts in the middle MoE layers",
    "router",
    fit,
    settings,
    needs=lambda training: [Need("router", router_layers(training.model))],
    unsaved="its expert usage has no artifact type yet: evaluate it with `xlalign evaluate --methods router`",
)
