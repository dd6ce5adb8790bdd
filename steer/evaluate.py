"""Side-effect measurements for interventions: next-token loss on held-out text."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from tqdm.auto import tqdm

from probes.capture import batches


def next_token_loss(
    model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 256, progress: bool = False
) -> float:
    """Mean next-token cross-entropy over every non-pad prediction of ``texts`` (token-weighted).

    Run it inside ``steer(...)`` to measure a steered model. Padding never enters: batched == one-by-one.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    work = batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device)
    with torch.inference_mode():
        for batch in tqdm(work, desc="loss", unit="batch", disable=not progress, leave=False):
            logits = model(**batch.model_inputs(model)).logits[:, :-1].float()
            targets = batch.input_ids[:, 1:]
            scored = batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()
            total += cross_entropy(logits[scored], targets[scored], reduction="sum").item()
            count += int(scored.sum())
    return total / count
