"""Forward passes and ``generate`` calls xlalign runs, whatever the backend: each is handed to the model's
:class:`probes.model.backend.Backend` (a direct call of the transformers model for ``hf`` and ``tl``, whose bridge
wraps the model's own modules; an nnsight trace for an nnsight model) with the context its hooks run in: this
caller's (batch and generate markers), copied here because this layer owns those markers."""

from __future__ import annotations

import contextvars
from typing import Any

import torch
from torch import nn

from probes.capture.context import generation_context
from probes.model import backend_of, unwrap


def forward(model: nn.Module, **inputs) -> Any:
    """The causal LM's output for ``inputs``."""
    return backend_of(model).forward(model, contextvars.copy_context(), **inputs)


def decoder_forward(model: nn.Module, **inputs) -> None:
    """The decoder stack without the LM head (an nnsight trace stops after the last hooked module)."""
    backend_of(model).decoder_forward(model, contextvars.copy_context(), **inputs)


def generate(model: nn.Module, **kwargs) -> torch.Tensor:
    """``model.generate(**kwargs)``: prompt and generated token ids."""
    # The hooks of a backend that runs them in its context see the call marked as one generation; hf and tl run
    # them here, where the marking ``generate`` wrapper of an open steer/record block marks it.
    return backend_of(model).generate(model, generation_context(unwrap(model)), **kwargs)
