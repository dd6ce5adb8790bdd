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
from probes.model.architectures import blocks, decoder, n_layers
from probes.model.hooks import HookSet, StopForward
from probes.model.sites import Site
from probes.model.tl import hook_point, is_bridged


def _stop(*_) -> None:
    raise StopForward


def add_early_exit(hooks: HookSet, model: nn.Module, layer: int) -> None:
    """Stop the forward pass once block ``layer`` ran (0: before block 1), after every read there; after the
    last block only the final norm is left (read by ``hidden`` sites), so the pass runs to the end."""
    if layer >= n_layers(model):
        return
    if layer == 0 and is_bridged(model):  # layer 0 is read inside block 1, at the bridge's hook point
        hooks.add(hook_point(model, Site(0, "resid")), "output", _stop, stage="stop", raw=True, name="early exit")
    elif layer == 0:
        hooks.add(blocks(model)[0], "input", _stop, stage="stop", raw=True, name="early exit")
    else:
        hooks.add(blocks(model)[layer - 1], "output", _stop, stage="stop", raw=True, name="early exit")


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
