"""Router interventions: edit an MoE gate's logits before top-k (the ``router`` component).

Each implements the :class:`~steer.interventions.Intervention` protocol on ``(batch, tokens, experts)``
logits; :func:`probes.model.moe.edit_router` then recomputes the top-k ids and weights of the edited tokens
with the family's own rule, so schedules, language gating and ``generate`` (with or without KV cache) work as
for any other site.

Guarantees: in the softmax families and GPT-OSS, Granite and Phi-MoE the selection is a top-k of the
logits themselves, so :class:`ForceExperts` (at most k experts) always selects and :class:`BanExperts`
never selects its experts. DeepSeek-V3 selects by ``sigmoid(logit) + bias`` within the best groups: a forced
logit is raised above every other but may still lose to the selection bias or the group limit unless
``eps`` is large (sigmoid saturates: ``eps`` of a few units suffices when the biases are small).

SteerMoE edits log-softmax scores; in families that route by a softmax of the logits (shift-invariant) editing
the logits selects and weights the same experts. As there, ``ForceExperts`` and ``BanExperts`` on one layer
take max and min from the unedited logits (``ctx.original``), so their order in a plan does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.model import Site
from steer.interventions import EditContext, InterventionError, check_units, finite, frozen_tensors


def _experts(experts: Mapping[int, Sequence[int] | Tensor]) -> dict[int, Tensor]:
    frozen = {layer: ids.long().flatten() for layer, ids in frozen_tensors(experts).items()}
    empty = [layer for layer, ids in frozen.items() if not len(ids)]
    if empty:
        raise InterventionError(f"router intervention: no experts given for layers {empty}")
    return frozen


@dataclass(frozen=True)
class _ExpertEdit:
    """An edit of some experts' router logits at some layers (``experts``: per layer, the expert ids)."""

    experts: dict[int, Int[Tensor, " n"]]
    component: str = field(default="router", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _experts(self.experts))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.experts))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        _check_router(site, shape, self.experts[site.layer])


@dataclass(frozen=True)
class RouterBias(_ExpertEdit):
    """logits[experts] += delta before top-k (Bandarkar et al.): delta > 0 promotes, delta < 0 suppresses.

    ``delta`` is one number or, per layer, one value per expert.
    """

    delta: float | dict[int, Float[Tensor, " n"]] = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.delta, Mapping):
            object.__setattr__(self, "delta", finite(frozen_tensors(self.delta), "delta", "RouterBias"))
            for layer, ids in self.experts.items():
                if layer not in self.delta or self.delta[layer].shape != ids.shape:
                    raise InterventionError(f"RouterBias layer {layer}: {len(ids)} experts need as many deltas")
        else:
            finite(self.delta, "delta", "RouterBias")

    def edit(self, x: Float[Tensor, "batch tokens experts"], ctx: EditContext) -> Float[Tensor, "batch tokens experts"]:
        delta = self.delta[ctx.layer].to(x) if isinstance(self.delta, dict) else self.delta
        out = x.clone()
        out[..., self.experts[ctx.layer].to(x.device)] += delta
        return out


@dataclass(frozen=True)
class _SetExpertLogits(_ExpertEdit):
    """Set the chosen experts' logits to a value derived from each token's logits (see subclasses)."""

    eps: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        finite(self.eps, "eps", type(self).__name__)

    def edit(self, x: Float[Tensor, "batch tokens experts"], ctx: EditContext) -> Float[Tensor, "batch tokens experts"]:
        out = x.clone()
        scores = x if ctx.original is None else ctx.original  # SteerMoE: max and min of the unedited scores
        out[..., self.experts[ctx.layer].to(x.device)] = self._value(scores).to(x.dtype)
        return out

    def _value(self, x: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ForceExperts(_SetExpertLogits):
    """SteerMoE activation: logits[experts] <- max(logits) + eps, so they enter the top-k (see the module
    docstring for DeepSeek-V3). Force at most k experts per layer, or the top-k picks among them."""

    def _value(self, x: Tensor) -> Tensor:
        return x.amax(dim=-1, keepdim=True) + self.eps


@dataclass(frozen=True)
class BanExperts(_SetExpertLogits):
    """SteerMoE deactivation: logits[experts] <- min(logits) - eps, so they leave the top-k (as long as at
    least k experts remain)."""

    def _value(self, x: Tensor) -> Tensor:
        return x.amin(dim=-1, keepdim=True) - self.eps


def _check_router(site: Site, shape: tuple[int, ...], experts: Tensor) -> None:
    if site.component != "router":
        raise InterventionError(f"{site}: router interventions edit router logits; use them on 'router' sites")
    check_units(site, experts, shape[0])


def middle_layers(layers: Sequence[int]) -> list[int]:
    """The middle third of ``layers`` (at least one), where routing is most language-universal."""
    layers = sorted(layers)
    third = len(layers) // 3
    return layers[third : len(layers) - third] or layers[len(layers) // 2 : len(layers) // 2 + 1]


def promote_pivot_experts(
    usage: Mapping[int, Float[Tensor, " experts"]],
    *,
    n_experts: int = 2,
    delta: float = 1.0,
    layers: Sequence[int] | None = None,
) -> RouterBias:
    """Bandarkar et al.'s routing steering: in ``layers`` (default: the middle third of those in ``usage``),
    add ``delta`` to the logits of the ``n_experts`` experts the pivot language uses most.

    ``usage``: per layer, the pivot's expert usage (e.g. the mean ``selected`` channel of mean-pooled ``router``
    activations, :func:`probes.analysis.router_matrices`). Gate it on the other languages with a
    :class:`~steer.schedule.Schedule` to leave the pivot untouched.
    """
    finite({layer: torch.as_tensor(values) for layer, values in usage.items()}, "usage", "promote_pivot_experts")
    chosen = middle_layers(list(usage)) if layers is None else list(layers)
    missing = [layer for layer in chosen if layer not in usage]
    if missing:
        raise InterventionError(f"promote_pivot_experts: no usage for layers {missing}; usage has {sorted(usage)}")
    top = {layer: torch.as_tensor(usage[layer]).topk(n_experts).indices for layer in chosen}
    return RouterBias(top, delta)


def steermoe_experts(
    risk: Mapping[int, Float[Tensor, " experts"]], *, n_force: int, n_ban: int, k: int, eps: float = 1e-2
) -> list[ForceExperts | BanExperts]:
    """SteerMoE's selection (``src/utils.py: steer_moe``, strategy ``risk_diff``) from per-layer risk differences
    (:func:`probes.analysis.risk_difference`, behaviour 1 = the one to steer towards): all (layer, expert) pairs
    sorted by ``|risk|`` (descending; ties by layer, then expert), the first ``n_force`` positive ones forced
    (at most ``k`` per layer: later ones are skipped, as the reference's per-layer limit does) and the first
    ``n_ban`` negative ones banned. Returns the ForceExperts and BanExperts (each only if it has experts)."""
    finite({layer: torch.as_tensor(values) for layer, values in risk.items()}, "risk", "steermoe_experts")
    rows = sorted(
        (
            (-abs(float(value)), layer, expert, float(value))
            for layer, values in risk.items()
            for expert, value in enumerate(values.tolist())
        ),
        key=lambda row: row[:3],
    )
    positive = [(layer, expert) for _, layer, expert, value in rows if value > 0][:n_force]
    negative = [(layer, expert) for _, layer, expert, value in rows if value < 0][:n_ban]
    if len(positive) != n_force or len(negative) != n_ban:
        raise InterventionError(
            f"SteerMoE: asked for {n_force} positive and {n_ban} negative experts; the risk "
            f"differences have {len(positive)} and {len(negative)}"
        )
    forced: dict[int, list[int]] = {}
    for layer, expert in positive:
        if len(forced.setdefault(layer, [])) < k:
            forced[layer].append(expert)
    banned: dict[int, list[int]] = {}
    for layer, expert in negative:
        banned.setdefault(layer, []).append(expert)
    edits: list[ForceExperts | BanExperts] = []
    if forced:
        edits.append(ForceExperts(forced, eps))
    if banned:
        edits.append(BanExperts(banned, eps))
    return edits
