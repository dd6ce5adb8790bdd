"""Schedules: which tokens of which forward passes an intervention touches.

Every forward pass inside ``steer()`` gets a :class:`StepContext`: for each of its tokens, whether it is a
prompt token (prefill) or a generated one, its position among the example's non-pad tokens, and the decode
step. The context is derived from the attention mask and the cache length, so it is the same with and
without KV cache, and with left or right padding.

Decode step ``s`` (1, 2, ...) is the forward pass over the ``s``-th generated token, which produces the
token after it. The first generated token therefore depends only on the prefill schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor


class ScheduleError(ValueError):
    """A schedule that cannot be applied to this input."""


@dataclass(frozen=True)
class StepContext:
    """What a hook needs to know about the tokens of the current forward pass."""

    valid: Bool[Tensor, "batch tokens"]  # non-pad tokens
    position: Int[Tensor, "batch tokens"]  # index among the example's non-pad tokens
    prompt_length: Int[Tensor, " batch"]  # non-pad prompt tokens per example
    decode_step: Int[Tensor, "batch tokens"]  # 0 for prompt tokens, s >= 1 for generated ones
    prompt_mask: Bool[Tensor, "batch prompt_tokens"]  # the prompt's padded layout, for token-mask schedules
    columns: Int[Tensor, " tokens"]  # column of each token in the padded full sequence
    languages: tuple[str, ...] | str | None  # language of each example (or one for all), for gating


@dataclass(frozen=True)
class Schedule:
    """Where an intervention applies.

    ``prefill``: ``"all"`` prompt tokens, ``"last"`` prompt token, ``"none"``, a ``(start, stop)`` span of
    non-pad prompt positions, or a boolean token mask shaped like the prompt's ``input_ids``.
    ``decode``: ``"all"`` steps, ``"none"``, or an int ``n`` for the first ``n`` steps.
    ``languages``: apply only to examples in these languages (the caller supplies each example's language).
    """

    prefill: str | tuple[int, int] | Tensor = "all"
    decode: str | int = "all"
    languages: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prefill, str) and self.prefill not in ("all", "last", "none"):
            raise ScheduleError(f"prefill={self.prefill!r}: use 'all', 'last', 'none', a (start, stop) span or a token mask")
        if isinstance(self.decode, str) and self.decode not in ("all", "none"):
            raise ScheduleError(f"decode={self.decode!r}: use 'all', 'none' or a number of steps")
        if isinstance(self.languages, str):
            object.__setattr__(self, "languages", (self.languages,))

    def select(self, ctx: StepContext) -> Bool[Tensor, "batch tokens"]:
        """The tokens of the current forward pass this schedule touches."""
        prompt = ctx.valid & (ctx.decode_step == 0)
        if isinstance(self.prefill, Tensor):
            inside = ctx.columns < self.prefill.shape[1]
            if self.prefill.shape[0] != prompt.shape[0]:
                raise ScheduleError(f"token mask has {self.prefill.shape[0]} rows, the batch has {prompt.shape[0]}")
            picked = torch.zeros_like(prompt)
            picked[:, inside] = self.prefill.to(prompt.device)[:, ctx.columns[inside]]
            chosen = prompt & picked
        elif self.prefill == "all":
            chosen = prompt
        elif self.prefill == "none":
            chosen = torch.zeros_like(prompt)
        elif self.prefill == "last":
            chosen = prompt & (ctx.position == ctx.prompt_length[:, None] - 1)
        else:
            start, stop = self.prefill
            chosen = prompt & (ctx.position >= start) & (ctx.position < stop)
        generated = ctx.valid & (ctx.decode_step > 0)
        if self.decode == "all":
            chosen = chosen | generated
        elif isinstance(self.decode, int):
            chosen = chosen | (generated & (ctx.decode_step <= self.decode))
        return chosen & self._gate(ctx)[:, None]

    def _gate(self, ctx: StepContext) -> Bool[Tensor, " batch"]:
        batch = ctx.valid.shape[0]
        if self.languages is None:
            return torch.ones(batch, dtype=torch.bool, device=ctx.valid.device)
        if isinstance(ctx.languages, str):
            return torch.full((batch,), ctx.languages in self.languages, device=ctx.valid.device)
        if ctx.languages is None or len(ctx.languages) != batch:
            raise ScheduleError(
                f"schedule gated on languages {list(self.languages)} needs the language of each of the {batch} "
                "examples: pass languages=[...] to steer() or handle.set_languages()"
            )
        return torch.tensor([lang in self.languages for lang in ctx.languages], device=ctx.valid.device)


def gated(languages: Sequence[str], **schedule) -> Schedule:
    """A schedule applied only to examples in ``languages``."""
    return Schedule(languages=tuple(languages), **schedule)
