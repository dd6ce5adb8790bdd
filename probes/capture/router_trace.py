"""RouterTrace: the routing of every counted token of some texts at each routed layer of an MoE model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.capture.bundle import takes_bundle
from probes.capture.context import ForwardContext, tracking
from probes.capture.decoder import run_batches
from probes.capture.progress import Progress
from probes.capture.tokenization import Batch, Tokenization, batches
from probes.model.access import site_location
from probes.model.architectures import arch_table, model_type, router_layers
from probes.model.hooks import HookSet
from probes.model.moe import ROUTER_CHANNELS, Routing, observe_router, probabilities, routing_view
from probes.model.sites import Site, SiteError
from probes.errors import XlalignError


class RouterTraceError(XlalignError):
    """A question a router trace cannot answer (an unknown importance variant)."""


_FIELDS = ("logits", "ids", "weights", "shared")  # probs are computed from the logits once, at the end


@dataclass(frozen=True)
class RouterTrace:
    """The routing of every counted token of some texts at each routed layer.

    Tokens are flattened in text order, then position: ``text[i]`` is the index of the text token ``i`` belongs
    to and ``position[i]`` its index among that text's non-pad tokens. Per layer: ``logits`` (raw),
    ``probs``, ``ids`` and ``weights`` (the top-k as the experts received them) and, for Qwen2-MoE, ``shared``
    (the sigmoid gate of the shared expert). See :mod:`probes.model.moe` for what each family's values mean.
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
        """Per token, the ``router`` site channels (:data:`probes.model.moe.ROUTER_CHANNELS`)."""
        return routing_view(self.probs[layer], self.ids[layer], self.weights[layer])

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
            raise RouterTraceError(
                f"unknown importance variant {variant!r}; choose one of {', '.join(ROUTER_CHANNELS)}"
            )
        return self.pooled(layer)[:, ROUTER_CHANNELS.index(variant)]


def _routed(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    routed = router_layers(model)
    if not routed:
        raise SiteError(f"a {model_type(model)} model has no MoE router")
    return routed if layers is None else sorted(set(layers))


@takes_bundle
def trace_router(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> RouterTrace:
    """The routing of every counted token of ``texts`` at ``layers`` (default: every routed layer)."""
    work = batches(tokenizer, texts, tokenization, device=next(model.parameters()).device)
    return trace_batches(model, work, layers=layers, progress=progress)


def trace_batches(
    model: nn.Module, work: Sequence[Batch], *, layers: Sequence[int] | None = None, progress: Progress = False
) -> RouterTrace:
    """:func:`trace_router` on batches already tokenised (the rows of all batches together must be 0..n-1).

    Runs the decoder without its LM head under ``torch.inference_mode()`` and stops after the deepest layer.
    """
    layers = _routed(model, layers)
    parts: dict[str, dict[int, list[Tensor]]] = {name: {layer: [] for layer in layers} for name in _FIELDS}
    texts, positions = [], []

    def on_pass(ctx: ForwardContext) -> None:
        texts.append(ctx.example[:, None].expand(ctx.counted.shape)[ctx.counted].cpu())
        positions.append(ctx.position[ctx.counted].cpu())

    with tracking(model, on_pass) as tracker, HookSet() as hooks:

        def on_routing(layer: int, routing: Routing) -> None:
            counted = tracker.current.counted
            for name in _FIELDS:
                value = getattr(routing, name)
                if value is not None:
                    parts[name][layer].append(value[counted.to(value.device)].cpu())

        for layer in layers:
            observe_router(
                hooks, site_location(model, Site(layer, "router")), lambda r, layer=layer: on_routing(layer, r)
            )
        run_batches(model, work, stop_after=max(layers), progress=progress, phase="route")
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
