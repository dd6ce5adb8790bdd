"""The one decoder loop: batches through the decoder stack without its LM head, stopping after the deepest layer
needed, under ``torch.inference_mode()``, with each batch's texts named as the examples of its passes."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from probes.capture.context import batch_context, new_call
from probes.capture.passes import decoder_forward
from probes.capture.progress import Progress, add_steps, progress_bar
from probes.capture.tokenization import Batch
from probes.model.architectures import decoder
from probes.model.backend import backend_of
from probes.model.hooks import HookSet, StopForward


def _stop(*_) -> None:
    raise StopForward


def add_early_exit(hooks: HookSet, model: nn.Module, layer: int) -> None:
    """Stop the forward pass once block ``layer`` ran (0: before block 1), after every read there, at the point
    the model's backend names; after the last block only the final norm is left (read by ``hidden`` sites), so
    the pass runs to the end."""
    point = backend_of(model).early_exit_point(model, layer)
    if point is not None:
        module, side = point
        hooks.add(module, side, _stop, stage="stop", raw=True, name="early exit")


def run_batches(
    model: nn.Module,
    work: Sequence[Batch],
    *,
    stop_after: int | None,
    progress: Progress = False,
    phase: str = "forward",
) -> None:
    """Run every batch of ``work`` (all passes form one call: examples are the texts' indices)."""
    stack = decoder(model)
    call = new_call()
    with torch.inference_mode(), HookSet() as hooks, progress_bar(progress, phase) as bar:
        add_steps(bar, len(work))
        if stop_after is not None:
            add_early_exit(hooks, model, stop_after)
        for batch in work:
            with batch_context(batch, call):
                try:
                    decoder_forward(model, **batch.model_inputs(stack), use_cache=False)
                except StopForward:
                    pass
            bar.update(1)
