"""MoE routing, read from each gate module and normalised across model families.

Every supported gate returns ``(logits, weights, ids)`` for the flattened tokens of its block (checked against
transformers 5.23; see the table in :mod:`probes.sites`). A :class:`Routing` is one such call reshaped to
``(batch, tokens, ...)``: the raw logits (before any softmax, sigmoid or bias), probabilities over all
experts, and the top-k ids and weights exactly as the experts received them.

``probs`` is ``softmax(logits)`` in the softmax families (Mixtral, OLMoE, Qwen-MoE, Phi-MoE, and also GPT-OSS
and Granite, whose gates only softmax the top-k logits) and ``sigmoid(logits)`` normalised to sum 1 in
DeepSeek-V3, whose gate scores experts independently.

The ``router`` site (what :func:`probes.capture.record`, :func:`probes.capture.capture` and the
ActivationStore see) is a ``(batch, tokens, 3, experts)`` view; its channels, :data:`ROUTER_CHANNELS`:

- ``prob``: ``probs``; mean-pooled, the expert importance of Bandarkar et al.
- ``weight``: the top-k weights renormalised to sum 1, zero elsewhere; mean-pooled, the "actual weight"
  importance (DeepSeek's scaling factor and Phi-MoE's unnormalised multipliers are divided out).
- ``selected``: 1 for the top-k experts; mean-pooled, how often each expert is chosen.

A store of ``router`` sites therefore holds ``(sentences, 3, experts)`` per layer. :class:`RouterTrace` keeps
every non-pad token instead. :func:`edit_router` rewrites logits before top-k and recomputes the top-k with
the family's own rule (:data:`RULES`), which the tests prove reproduces every gate bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from probes.capture import Batch, StopForward, _stop_hook, batches
from probes.sites import RouterPoint, Site, SiteError, arch_table, first_tensor, router_layers, tap

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
        raise ValueError("Phi-MoE routes by sampling in training mode: call model.eval() before steering its router")
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
        return _view(self.probs, self.ids, self.weights)


def _view(probs: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    weights = weights.float()
    actual = torch.zeros_like(probs).scatter_(-1, ids, weights / weights.sum(dim=-1, keepdim=True))
    selected = torch.zeros_like(probs).scatter_(-1, ids, 1.0)
    return torch.stack([probs, actual, selected], dim=-2)


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _shape_hook(point: RouterPoint, state: dict):
    """Remember the (batch, tokens) layout of each call of the MoE block (its gate sees flattened tokens)."""

    def remember(_module, args, kwargs):
        state["shape"] = first_tensor(args[0] if args else kwargs["hidden_states"]).shape[:-1]

    return point.block.register_forward_pre_hook(remember, with_kwargs=True)


def observe_router(point: RouterPoint, on_routing: Callable[[Routing], None]) -> _Handles:
    """Call ``on_routing`` after each call of ``point``'s MoE block with what its gate decided."""
    state: dict = {}
    rule = point.spec.rule

    def on_gate(_module, _args, output):
        state["gate"] = output

    def on_shared(_module, _args, output):
        state["shared"] = output

    def on_block(_module, _args, _output):
        logits, weights, ids = state.pop("gate")
        shape = state.pop("shape")
        shared = state.pop("shared", None)
        on_routing(Routing(
            logits.float().view(*shape, -1), ids.view(*shape, -1), weights.float().view(*shape, -1),
            None if shared is None else shared.float().sigmoid().view(shape), rule,
        ))  # fmt: skip

    handles = [_shape_hook(point, state), point.gate.register_forward_hook(on_gate)]
    if point.shared_gate is not None:
        handles.append(point.shared_gate.register_forward_hook(on_shared))
    handles.append(point.block.register_forward_hook(on_block))
    return _Handles(handles)


def read_router_view(point: RouterPoint, fn: Callable[[Tensor], Tensor | None]) -> _Handles:
    """:func:`probes.sites.hook` for ``router`` sites: ``fn`` sees the ``(batch, tokens, 3, experts)`` view."""

    def on_routing(routing: Routing) -> None:
        if fn(routing.view()) is not None:
            raise SiteError(
                f"router.{point.layer}: the routing view is read-only; steer a router with steer.routing "
                "interventions (RouterBias, ForceExperts, BanExperts), which edit its logits"
            )

    return observe_router(point, on_routing)


def edit_router(
    point: RouterPoint, fn: Callable[[Float[Tensor, "batch tokens experts"]], Tensor | None]
) -> _Handles:
    """Let ``fn`` rewrite the router logits before top-k; the top-k of changed tokens is recomputed by the
    family's rule, and the gate's output (logits included) is replaced. Runs before any other gate hook."""
    state: dict = {}
    rule = RULES[point.spec.rule]

    def on_gate(module, _args, output):
        logits, weights, ids = output
        shape = state["shape"]
        edited = fn(logits.view(*shape, -1))
        if edited is None:
            return None
        if edited.shape != (*shape, logits.shape[-1]):
            raise ValueError(
                f"router.{point.layer}: an edit returned shape {tuple(edited.shape)}; "
                f"the logits are {(*shape, logits.shape[-1])}"
            )
        edited = edited.reshape(logits.shape).to(logits.dtype)
        changed = (edited != logits).any(dim=-1)
        if not changed.any():
            return None
        new_weights, new_ids = rule(module, edited[changed])
        weights, ids = weights.clone(), ids.clone()
        weights[changed] = new_weights.to(weights.dtype)
        ids[changed] = new_ids.to(ids.dtype)
        return edited, weights, ids

    return _Handles([_shape_hook(point, state), point.gate.register_forward_hook(on_gate, prepend=True)])


@contextmanager
def record_routing(
    model: nn.Module, on_routing: Callable[[int, Routing], None], layers: Sequence[int] | None = None
) -> Iterator[None]:
    """Call ``on_routing(layer, routing)`` for each routed layer on every forward pass inside the block."""
    handles = []
    try:
        for layer in _routed(model, layers):
            point, _ = tap(model, Site(layer, "router"))
            handles.append(observe_router(point, lambda routing, layer=layer: on_routing(layer, routing)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _routed(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    routed = router_layers(model)
    if not routed:
        raise SiteError(f"a {model.config.model_type} model has no MoE router")
    return routed if layers is None else sorted(set(layers))


@dataclass(frozen=True)
class RouterTrace:
    """The routing of every non-pad token of some texts at each routed layer.

    Tokens are flattened in text order, then position: ``text[i]`` is the index of the text token ``i`` belongs
    to and ``position[i]`` its index among that text's non-pad tokens. Per layer: ``logits`` (raw),
    ``probs``, ``ids`` and ``weights`` (the top-k as the experts received them) and, for Qwen2-MoE, ``shared``
    (the sigmoid gate of the shared expert). See the module docstring for what each family's values mean.
    """

    logits: dict[int, Float[Tensor, "tokens experts"]]
    probs: dict[int, Float[Tensor, "tokens experts"]]
    ids: dict[int, Int[Tensor, "tokens k"]]
    weights: dict[int, Float[Tensor, "tokens k"]]
    shared: dict[int, Float[Tensor, " tokens"]]
    text: Int[Tensor, " tokens"]
    position: Int[Tensor, " tokens"]
    n_texts: int

    @property
    def layers(self) -> list[int]:
        return sorted(self.logits)

    def view(self, layer: int) -> Float[Tensor, "tokens 3 experts"]:
        """Per token, the ``router`` site channels (:data:`ROUTER_CHANNELS`)."""
        return _view(self.probs[layer], self.ids[layer], self.weights[layer])

    def pooled(self, layer: int) -> Float[Tensor, "texts 3 experts"]:
        """Token means per text: what a mean-pooled ``router`` site in the ActivationStore holds."""
        view = self.view(layer)
        sums = torch.zeros(self.n_texts, *view.shape[1:]).index_add_(0, self.text, view)
        counts = torch.bincount(self.text, minlength=self.n_texts).clamp(min=1)
        return sums / counts[:, None, None]

    def importance(self, layer: int, variant: str = "prob") -> Float[Tensor, "texts experts"]:
        """Expert importance per text: ``prob`` (token mean of probabilities), ``weight`` (top-k renormalised,
        the "actual weight") or ``selected`` (fraction of tokens routed to each expert)."""
        if variant not in ROUTER_CHANNELS:
            raise ValueError(f"unknown importance variant {variant!r}; choose one of {', '.join(ROUTER_CHANNELS)}")
        return self.pooled(layer)[:, ROUTER_CHANNELS.index(variant)]


def trace_router(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    padding_side: str = "right",
    exclude_bos: bool = False,
    progress: bool = False,
) -> RouterTrace:
    """The routing of every non-pad token of ``texts`` at ``layers`` (default: every routed layer)."""
    device = next(model.parameters()).device
    work = batches(
        tokenizer, texts, batch_size=batch_size, max_length=max_length,
        padding_side=padding_side, exclude_bos=exclude_bos, device=device,
    )  # fmt: skip
    return trace_batches(model, work, layers=layers, progress=progress)


def trace_batches(
    model: nn.Module, work: Sequence[Batch], *, layers: Sequence[int] | None = None, progress: bool = False
) -> RouterTrace:
    """:func:`trace_router` on batches already tokenised (rows of all batches together must be 0..n-1).

    Runs the decoder without its LM head under ``torch.inference_mode()`` and stops after the deepest layer.
    """
    layers = _routed(model, layers)
    parts: dict[str, dict[int, list[Tensor]]] = {name: {layer: [] for layer in layers} for name in _FIELDS}
    texts, positions = [], []
    current: list[Bool[Tensor, "batch tokens"]] = []

    def on_routing(layer: int, routing: Routing) -> None:
        mask = current[0]
        for name in _FIELDS:
            value = getattr(routing, name)
            if value is not None:
                parts[name][layer].append(value[mask].cpu())

    decoder = model.base_model
    with torch.inference_mode(), record_routing(model, on_routing, layers):
        stop = _stop_hook(model, max(layers))
        try:
            for batch in tqdm(work, desc="route", unit="batch", disable=not progress, leave=False):
                current[:] = [batch.token_mask]
                texts.append(batch.rows[:, None].expand(batch.token_mask.shape)[batch.token_mask.cpu()])
                positions.append((batch.attention_mask.cumsum(dim=1) - 1)[batch.token_mask].cpu())
                try:
                    decoder(**batch.model_inputs(decoder), use_cache=False)
                except StopForward:
                    pass
        finally:
            stop.remove()
    text, position = torch.cat(texts), torch.cat(positions)
    order = torch.argsort(text * (int(position.max()) + 1) + position)
    fields = {
        name: {layer: torch.cat(values)[order] for layer, values in by_layer.items() if values}
        for name, by_layer in parts.items()
    }
    rule = arch_table(model).router.rule
    fields["probs"] = {layer: probabilities(rule, logits) for layer, logits in fields["logits"].items()}
    n_texts = sum(len(batch.rows) for batch in work)
    return RouterTrace(**fields, text=text[order], position=position[order], n_texts=n_texts)


_FIELDS = ("logits", "ids", "weights", "shared")  # probs are computed from the logits once, at the end
