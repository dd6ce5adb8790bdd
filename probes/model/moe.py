"""MoE routing at the gate: each family's top-k rule, probabilities, and hooks that read or rewrite routing.

Every supported gate returns ``(logits, weights, ids)`` for the flattened tokens of its block (checked against
transformers 5.23; see the table in :mod:`probes.model.architectures`). A :class:`Routing` is one such call
reshaped to ``(batch, tokens, ...)``: the raw logits (before any softmax, sigmoid or bias), probabilities over all
experts, and the top-k ids and weights exactly as the experts received them.

``probs`` is ``softmax(logits)`` in the softmax families (Mixtral, OLMoE, Qwen-MoE, Phi-MoE, and also GPT-OSS
and Granite, whose gates only softmax the top-k logits) and ``sigmoid(logits)`` normalised to sum 1 in
DeepSeek-V3, whose gate scores experts independently.

Read as a site, ``router`` is a ``(batch, tokens, 3, experts)`` view; its channels, :data:`ROUTER_CHANNELS`:

- ``prob``: ``probs``; mean-pooled, the expert importance of Bandarkar et al.
- ``weight``: the top-k weights renormalised to sum 1, zero elsewhere; mean-pooled, the "actual weight"
  importance (DeepSeek's scaling factor and Phi-MoE's unnormalised multipliers are divided out).
- ``selected``: 1 for the top-k experts; mean-pooled, how often each expert is chosen.

:func:`edit_router` rewrites logits before top-k and recomputes the top-k with the family's own rule
(:data:`RULES`), which the tests prove reproduces every gate bit for bit. Edits run before reads (see
:mod:`probes.model.hooks`), so a reader sees the routing the experts received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.model.architectures import RouterPoint
from probes.model.hooks import HookSet, first_tensor
from probes.model.sites import SiteError
from probes.model.tiny import ModelError

ROUTER_CHANNELS = ("prob", "weight", "selected")
Rule = Callable[[nn.Module, Float[Tensor, "n experts"]], tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]]


def _softmax_topk(gate: nn.Module, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Mixtral, OLMoE, Qwen2/3-MoE: softmax over all experts, top-k, renormalised unless norm_topk_prob=False."""
    top, ids = torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float), gate.top_k, dim=-1)
    if getattr(gate, "norm_topk_prob", True):  # Mixtral has no switch: it always renormalises
        top = top / top.sum(dim=-1, keepdim=True)
    return top, ids


def _topk_softmax(gate: nn.Module, logits: Tensor) -> tuple[Tensor, Tensor]:
    """GPT-OSS, Granite-MoE: top-k of the logits, softmax over those k."""
    top, ids = torch.topk(logits, gate.top_k, dim=-1)
    return torch.softmax(top, dim=-1, dtype=top.dtype), ids


def _sigmoid_group(gate: nn.Module, logits: Tensor) -> tuple[Tensor, Tensor]:
    """DeepSeek-V3: sigmoid scores; selection adds the correction bias and keeps the best ``topk_group``
    groups (ranked by their two best scores); weights are the unbiased scores, renormalised and scaled."""
    scores = logits.sigmoid()
    choice = scores + gate.e_score_correction_bias
    groups = choice.view(-1, gate.num_group, gate.num_experts // gate.num_group)
    best = torch.topk(groups.topk(2, dim=-1)[0].sum(dim=-1), k=gate.topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros(groups.shape[:2], dtype=torch.bool, device=logits.device).scatter_(1, best, True)
    choice = choice.masked_fill(~keep.repeat_interleave(groups.shape[-1], dim=1), float("-inf"))
    ids = torch.topk(choice, k=gate.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if gate.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * gate.routed_scaling_factor, ids


def _sparsemixer(gate: nn.Module, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Phi-MoE: the model's own sparsemixer (deterministic in eval mode only)."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    if gate.training:
        raise ModelError("Phi-MoE routes by sampling in training mode: call model.eval() before steering its router")
    return sparsemixer(logits, jitter_eps=gate.router_jitter_noise, training=False, top_k=gate.top_k)


RULES: dict[str, Rule] = {
    "softmax_topk": _softmax_topk,
    "topk_softmax": _topk_softmax,
    "sigmoid_group": _sigmoid_group,
    "sparsemixer": _sparsemixer,
}


def probabilities(rule: str, logits: Float[Tensor, "... experts"]) -> Float[Tensor, "... experts"]:
    """Probabilities over all experts: softmax, or for sigmoid gates the scores normalised to sum 1."""
    if rule == "sigmoid_group":
        scores = logits.float().sigmoid()
        return scores / scores.sum(dim=-1, keepdim=True)
    return torch.softmax(logits, dim=-1, dtype=torch.float)


@dataclass(frozen=True)
class Routing:
    """One gate call, per token of the block's input (pads included)."""

    logits: Float[Tensor, "batch tokens experts"]
    ids: Int[Tensor, "batch tokens k"]
    weights: Float[Tensor, "batch tokens k"]  # as the experts received them
    shared: Float[Tensor, "batch tokens"] | None  # sigmoid gate of the shared expert (Qwen2-MoE), else None
    rule: str  # the family's rule (:data:`RULES`), which says how logits become probabilities

    @property
    def probs(self) -> Float[Tensor, "batch tokens experts"]:
        """Probabilities over all experts (computed on access: a trace computes them once, at the end)."""
        return probabilities(self.rule, self.logits)

    def view(self) -> Float[Tensor, "batch tokens 3 experts"]:
        """The ``router`` site tensor: probabilities, renormalised top-k weights, top-k indicator."""
        return routing_view(self.probs, self.ids, self.weights)


def routing_view(probs: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    weights = weights.float()
    actual = torch.zeros_like(probs).scatter_(-1, ids, weights / weights.sum(dim=-1, keepdim=True))
    selected = torch.zeros_like(probs).scatter_(-1, ids, 1.0)
    return torch.stack([probs, actual, selected], dim=-2)


def _remember_shape(hooks: HookSet, point: RouterPoint, state: dict) -> None:
    """Remember the (batch, tokens) layout of each call of the MoE block (its gate sees flattened tokens)."""

    def remember(value) -> None:
        args, kwargs = value
        state["shape"] = first_tensor(args[0] if args else kwargs["hidden_states"]).shape[:-1]

    hooks.add(point.block, "input", remember, raw=True, name=f"router.{point.layer}")


def observe_router(hooks: HookSet, point: RouterPoint, on_routing: Callable[[Routing], None]) -> None:
    """Call ``on_routing`` after each call of ``point``'s MoE block with what its gate decided (after edits);
    it must return None (a read-only hook)."""
    state: dict = {}
    rule, name = point.spec.rule, f"router.{point.layer}"

    def on_gate(output) -> None:
        state["gate"] = output

    def on_shared(output) -> None:
        state["shared"] = output

    def on_block(_output) -> None:
        logits, weights, ids = state.pop("gate")
        shape = state["shape"]
        shared = state.pop("shared", None)
        return on_routing(
            Routing(
                logits.float().view(*shape, -1),
                ids.view(*shape, -1),
                weights.float().view(*shape, -1),
                None if shared is None else shared.float().sigmoid().view(shape),
                rule,
            )
        )

    _remember_shape(hooks, point, state)
    hooks.add(point.gate, "output", on_gate, raw=True, name=name)
    if point.shared_gate is not None:
        hooks.add(point.shared_gate, "output", on_shared, raw=True, name=name)
    hooks.add(point.block, "output", on_block, raw=True, name=name)


def edit_router(
    hooks: HookSet, point: RouterPoint, fn: Callable[[Float[Tensor, "batch tokens experts"]], Tensor | None]
) -> None:
    """Let ``fn`` rewrite the router logits before top-k; the top-k of changed tokens is recomputed by the
    family's rule, and the gate's output (logits included) is replaced."""
    state: dict = {}
    rule = RULES[point.spec.rule]

    def on_gate(output):
        logits, weights, ids = output
        shape = state["shape"]
        edited = fn(logits.view(*shape, -1))
        if edited is None:
            return None
        if edited.shape != (*shape, logits.shape[-1]):
            raise SiteError(
                f"router.{point.layer}: an edit returned shape {tuple(edited.shape)}; "
                f"the logits are {(*shape, logits.shape[-1])}"
            )
        edited = edited.reshape(logits.shape).to(logits.dtype)
        changed = (edited != logits).any(dim=-1)
        if not changed.any():
            return None
        new_weights, new_ids = rule(point.gate, edited[changed])
        weights, ids = weights.clone(), ids.clone()
        weights[changed] = new_weights.to(weights.dtype)
        ids[changed] = new_ids.to(ids.dtype)
        return edited, weights, ids

    _remember_shape(hooks, point, state)
    hooks.add(point.gate, "output", on_gate, stage="edit", raw=True, name=f"router.{point.layer}")
