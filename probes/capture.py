"""Capture activations at sites: hooks in a context manager, padding-aware pooling, early exit.

``record()`` is the low-level context manager (baukit's ``Trace`` with types): while it is open, a callback
sees every site's tensor on each forward pass; the hooks are removed on exit, also after an exception or a
KeyboardInterrupt. ``capture()`` runs texts through the model in length-sorted batches under
``torch.inference_mode()``, skips the LM head, stops after the last needed layer, and pools each site over
non-pad tokens inside the hook, so no per-token activations of a corpus are ever kept.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from probes.sites import Site, blocks, hook, n_heads, tap

POOLINGS = ("mean", "weighted", "last", "max", "active")

TokenCallback = Callable[[Site, Float[Tensor, "tokens *dims"], Int[Tensor, " tokens"]], None]


class StopForward(Exception):
    """Raised inside the model after the last needed layer ran; ``record(stop=True)`` swallows it."""


def pool(
    hidden: Float[Tensor, "batch tokens *dims"], mask: Bool[Tensor, "batch tokens"], method: str
) -> Float[Tensor, "batch *dims"]:
    """Pool over the tokens where ``mask`` is true.

    ``mean``: plain mean. ``weighted`` (MEXA): weights 1, 2, ..., T over the kept tokens, normalised to sum 1.
    ``last``: the last kept token (not index -1: with right padding it sits at ``mask.sum(1) - 1``).
    ``max``: elementwise max (Suau et al.). ``active``: the fraction of tokens where each unit is > 0
    (NeuronXA's neuron states, on ``mlp_gate``). Pad positions never enter, even if they hold NaN or inf.
    """
    hidden = hidden.float()
    extra = (1,) * (hidden.dim() - 2)
    keep = mask.view(*mask.shape, *extra)
    if method == "max":
        return hidden.masked_fill(~keep, float("-inf")).amax(dim=1)
    if method == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).amax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if method == "active":
        hidden = (hidden > 0).float()
    if method in ("mean", "active"):
        weights = mask.float()
    elif method == "weighted":
        weights = mask.float().cumsum(dim=1) * mask
    else:
        raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(*mask.shape, *extra)
    return torch.where(keep, hidden, 0.0).mul(weights).sum(dim=1)


@contextmanager
def record(
    model: nn.Module, sites: Sequence[Site], on_activation: Callable[[Site, Tensor], None], *, stop: bool = False
) -> Iterator[None]:
    """Call ``on_activation(site, tensor)`` for every site on each forward pass inside the block.

    With ``stop=True`` the forward pass ends right after the block holding the deepest site; the model call
    inside the ``with`` body then returns nothing and the rest of the body is skipped (baukit semantics).
    """
    handles = []
    try:
        for site in sorted(set(sites)):
            module, side = tap(model, site)
            handles.append(hook(module, side, lambda tensor, site=site: on_activation(site, tensor)))
        if stop:
            handles.append(_stop_hook(model, max(site.layer for site in sites)))
        yield
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _stop_hook(model: nn.Module, layer: int):
    """A hook that raises StopForward once ``layer`` is done (registered last, so reading hooks run first)."""

    def stop(*_):
        raise StopForward

    if layer == 0:
        return blocks(model)[0].register_forward_pre_hook(stop)
    return blocks(model)[layer - 1].register_forward_hook(stop)


@dataclass(frozen=True)
class Batch:
    """Padded token ids of some corpus rows, with their masks."""

    rows: Int[Tensor, " batch"]
    input_ids: Int[Tensor, "batch tokens"]
    attention_mask: Int[Tensor, "batch tokens"]
    token_mask: Bool[Tensor, "batch tokens"]  # tokens that pooling and statistics see

    def model_inputs(self, model: nn.Module) -> dict[str, Tensor]:
        """Inputs for ``model``; positions follow the mask, so left padding does not shift them."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if _takes_position_ids(type(model).forward):
            inputs["position_ids"] = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return inputs


@functools.lru_cache(maxsize=None)
def _takes_position_ids(forward: Callable) -> bool:
    """Whether a model class's forward accepts ``position_ids`` (BLOOM's does not: ALiBi follows the mask)."""
    return "position_ids" in inspect.signature(forward).parameters


def batches(
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    padding_side: str = "right",
    exclude_bos: bool = False,
    device: torch.device | str = "cpu",
) -> list[Batch]:
    """Tokenise ``texts`` and group them into batches of similar length (longest first)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = len(ids[rows[0]])
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(ids[row])
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[r, span] = torch.tensor(ids[row])
            attention_mask[r, span] = 1
        token_mask = attention_mask.bool()
        if exclude_bos and tokenizer.bos_token_id is not None:
            token_mask &= input_ids != tokenizer.bos_token_id
        out.append(
            Batch(torch.tensor(rows), input_ids.to(device), attention_mask.to(device), token_mask.to(device))
        )
    return out


def capture(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[Site],
    *,
    pooling: str | None = "mean",
    on_tokens: TokenCallback | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    padding_side: str = "right",
    exclude_bos: bool = False,
    progress: bool = True,
) -> dict[Site, Float[Tensor, "n *dims"]]:
    """Pooled activations of ``texts`` at ``sites``, in the order of ``texts``.

    ``on_tokens(site, values, rows)`` additionally receives each batch's non-pad token activations and the
    index of the text each token belongs to, for streaming statistics. ``head`` sites come out as
    ``(n, heads, head_dim)``; others as ``(n, width)``. With ``pooling=None`` only ``on_tokens`` is fed.
    """
    device = next(model.parameters()).device
    work = batches(
        tokenizer, texts, batch_size=batch_size, max_length=max_length,
        padding_side=padding_side, exclude_bos=exclude_bos, device=device,
    )  # fmt: skip
    return capture_batches(model, work, sites, pooling=pooling, on_tokens=on_tokens, progress=progress)


def capture_batches(
    model: nn.Module,
    work: Sequence[Batch],
    sites: Sequence[Site],
    *,
    pooling: str | None = "mean",
    on_tokens: TokenCallback | None = None,
    progress: bool = False,
) -> dict[Site, Float[Tensor, "n *dims"]]:
    """:func:`capture` on batches already tokenised (rows of all batches together must be 0..n-1)."""
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if not sites:
        raise ValueError("capture needs at least one site")
    heads = n_heads(model)
    pooled: dict[Site, list[Tensor]] = {site: [] for site in sites}
    current: list[Batch] = []

    def on_activation(site: Site, tensor: Tensor) -> None:
        batch = current[0]
        values = rearrange(tensor, "b t (h d) -> b t h d", h=heads) if site.component == "head" else tensor
        if pooling is not None:
            pooled[site].append(pool(values, batch.token_mask, pooling).cpu())
        if on_tokens is not None:
            rows = batch.rows.to(tensor.device)[:, None].expand(batch.token_mask.shape)
            on_tokens(site, values[batch.token_mask].float(), rows[batch.token_mask])

    decoder = model.base_model  # the decoder stack without the LM head
    with torch.inference_mode(), record(model, sites, on_activation, stop=True):
        for batch in tqdm(work, desc="capture", unit="batch", disable=not progress, leave=False):
            current[:] = [batch]
            try:
                decoder(**batch.model_inputs(decoder), use_cache=False)
            except StopForward:
                pass
    if pooling is None:
        return {}
    order = torch.cat([batch.rows for batch in work])
    result = {}
    for site, parts in pooled.items():
        stacked = torch.cat(parts)
        result[site] = torch.empty_like(stacked)
        result[site][order] = stacked
    return result


def capture_by_layer(
    model: nn.Module,
    tokenizer,
    corpus,
    component: str,
    layers: Sequence[int],
    languages: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, dict[str, Float[Tensor, "n *dims"]]]:
    """Pooled ``component`` activations of every language of a parallel corpus: ``{layer: {language: (n, ...)}}``."""
    sites = [Site(layer, component) for layer in layers]
    by_language = {
        lang: capture(model, tokenizer, corpus.texts(lang), sites, pooling=pooling, batch_size=batch_size, progress=progress)
        for lang in languages
    }
    return {site.layer: {lang: by_language[lang][site] for lang in languages} for site in sites}
