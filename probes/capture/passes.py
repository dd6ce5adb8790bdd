"""Forward passes and ``generate`` calls xlalign runs, whatever the backend: a direct call of the transformers
model (``hf``, and ``tl``, whose bridge wraps the model's own modules), or an nnsight trace for an nnsight model
(:mod:`probes.model.envoys`), whose body is given this caller's context (batch and generate markers)."""

from __future__ import annotations

import contextvars
from typing import Any

import torch
from torch import nn

from probes.capture.context import generating
from probes.model import decoder, unwrap
from probes.model import envoys


def forward(model: nn.Module, **inputs) -> Any:
    """The causal LM's output for ``inputs``."""
    if envoys.is_nnsight(model):
        return envoys.trace(model, contextvars.copy_context(), **inputs)
    return unwrap(model)(**inputs)


def decoder_forward(model: nn.Module, **inputs) -> None:
    """The decoder stack without the LM head (an nnsight trace stops after the last hooked module)."""
    if envoys.is_nnsight(model):
        envoys.trace(model, contextvars.copy_context(), output=False, **inputs)
    else:
        decoder(model)(**inputs)


def generate(model: nn.Module, **kwargs) -> torch.Tensor:
    """``model.generate(**kwargs)``: prompt and generated token ids."""
    if not envoys.is_nnsight(model):
        return unwrap(model).generate(**kwargs)
    with generating(unwrap(model)):  # marked in the context the trace body is given
        return envoys.generate(model, contextvars.copy_context(), **kwargs)
