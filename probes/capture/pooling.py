"""Pooling over non-pad tokens: one vector per text, whatever the padding side."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.choices import POOLINGS
from probes.errors import XlalignError


class PoolingError(XlalignError):
    """A pooling xlalign does not know."""


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise PoolingError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return pooling


def pool(
    hidden: Float[Tensor, "batch tokens *dims"], mask: Bool[Tensor, "batch tokens"], method: str
) -> Float[Tensor, "batch *dims"]:
    """Pool over the tokens where ``mask`` is true (in float32, whatever the model's dtype).

    ``mean``: plain mean. ``weighted`` (MEXA): weights 1, 2, ..., T over the kept tokens, normalised to sum 1.
    ``last``: the last kept token (not index -1: with right padding it sits at ``mask.sum(1) - 1``).
    ``max``: elementwise max (Suau et al.). ``active``: the fraction of tokens where each unit is > 0.
    ``nas`` / ``nav`` (NeuronXA's sentence neuron states and values, on ``mlp_gate``): MEXA's position weights
    over the binary states ``unit > 0`` / over ``|unit|``. Pad positions never enter, even if they hold NaN or inf.
    The result is on ``hidden``'s device.
    """
    hidden, mask = hidden.float(), mask.to(hidden.device)  # a layer may sit on another GPU than the inputs
    extra = (1,) * (hidden.dim() - 2)
    keep = mask.view(*mask.shape, *extra)
    if method == "max":
        return hidden.masked_fill(~keep, float("-inf")).amax(dim=1)
    if method == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).amax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if method in ("active", "nas"):
        hidden = (hidden > 0).float()
    elif method == "nav":
        hidden = hidden.abs()
    if method in ("mean", "active"):
        weights = mask.float()
    elif method in ("weighted", "nas", "nav"):
        weights = mask.float().cumsum(dim=1) * mask
    else:
        check_pooling(method)
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(*mask.shape, *extra)
    return torch.where(keep, hidden, 0.0).mul(weights).sum(dim=1)
