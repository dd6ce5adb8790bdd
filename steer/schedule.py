"""Schedules: which tokens of which forward passes an intervention touches.

Every forward pass has a :class:`~probes.capture.ForwardContext`: for each token whether it is a prompt token
or a generated one, its position among the example's non-pad tokens, and the decode step. It is derived from
the attention mask and the cache length, so the same with and without KV cache, with left or right padding.

Decode step ``s`` (1, 2, ...) is the forward pass over the ``s``-th generated token, which produces the token
after it. The first generated token therefore depends only on the prefill schedule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from probes.capture import ForwardContext
from probes.errors import XlalignError

Span = tuple[int | None, int | None]
RENAMED = (
    "Schedule(languages=...) is renamed Schedule(only=...) (the languages an intervention touches, not "
    "steer(languages=...), the language of each example); languages= will be removed in the next release"
)


class ScheduleError(XlalignError):
    """A schedule that cannot be applied to this input."""


def _check_span(span: tuple, what: str) -> None:
    if len(span) != 2 or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in span):
        raise ScheduleError(f"{what}={span!r}: a span is (start, stop) of ints or None")
    start, stop = span
    if start is not None and stop is not None:
        if (start < 0) != (stop < 0):
            raise ScheduleError(
                f"{what}={span!r} mixes a negative and a non-negative bound, which selects different tokens for "
                "prompts of different lengths; use (-k, None) for the last k tokens or (a, b) with 0 <= a < b"
            )
        if start >= stop:
            raise ScheduleError(f"{what}={span!r} is empty or reversed: start must be below stop")


@dataclass(frozen=True, init=False)
class Schedule:
    """Where an intervention applies.

    ``prefill``: ``"all"`` prompt tokens, ``"last"`` prompt token, ``"none"``, a ``(start, stop)`` span of
    non-pad prompt positions (Python-style: ``(-3, None)`` = the last three, ``(0, 2)`` = the first two; a
    span reaching past an example's prompt, or selecting none of it, is an error), or a boolean token mask shaped
    like the prompt's
    ``input_ids``. ``decode``: ``"all"`` steps, ``"none"``, ``n`` (the first ``n`` steps) or a ``(start, stop)``
    range of steps (1-based, ``stop`` exclusive or None). ``only``: apply only to examples in these languages
    (``steer(..., languages=...)`` says which language each example is); ``None``: every example.
    ``languages=`` is the old name of ``only=``: it still works in this release, with a ``FutureWarning``.
    """

    prefill: str | Span | Tensor = "all"
    decode: str | int | Span = "all"
    only: tuple[str, ...] | None = None

    def __init__(
        self,
        prefill: str | Span | Tensor = "all",
        decode: str | int | Span = "all",
        only: Sequence[str] | str | None = None,
        *,
        languages: Sequence[str] | str | None = None,
    ) -> None:
        if languages is not None:
            if only is not None:
                raise ScheduleError(
                    f"Schedule(only={only!r}, languages={languages!r}): languages= is the old name of only=; pass only="
                )
            warnings.warn(RENAMED, FutureWarning, stacklevel=2)
            only = languages
        object.__setattr__(self, "prefill", prefill)
        object.__setattr__(self, "decode", decode)
        object.__setattr__(self, "only", only)
        self.__post_init__()

    @property
    def languages(self) -> tuple[str, ...] | None:
        """The old name of :attr:`only` (kept one release, with a ``FutureWarning``)."""
        warnings.warn(RENAMED, FutureWarning, stacklevel=2)
        return self.only

    def __post_init__(self) -> None:
        if isinstance(self.prefill, str) and self.prefill not in ("all", "last", "none"):
            raise ScheduleError(
                f"prefill={self.prefill!r}: use 'all', 'last', 'none', a (start, stop) span or a token mask"
            )
        if isinstance(self.prefill, (tuple, list)):
            _check_span(tuple(self.prefill), "prefill")
            object.__setattr__(self, "prefill", tuple(self.prefill))
        elif isinstance(self.prefill, Tensor) and self.prefill.dtype != torch.bool:
            raise ScheduleError(f"a prefill token mask must be boolean, got {self.prefill.dtype}")
        if isinstance(self.decode, str) and self.decode not in ("all", "none"):
            raise ScheduleError(
                f"decode={self.decode!r}: use 'all', 'none', a number of steps or a (start, stop) range"
            )
        if isinstance(self.decode, bool) or (isinstance(self.decode, int) and self.decode < 0):
            raise ScheduleError(f"decode={self.decode!r}: a number of steps is an int >= 0")
        if isinstance(self.decode, (tuple, list)):
            _check_span(tuple(self.decode), "decode")
            start, stop = self.decode
            if (start is not None and start < 1) or (stop is not None and stop < 1):
                raise ScheduleError(f"decode={tuple(self.decode)!r}: decode steps count from 1")
            object.__setattr__(self, "decode", tuple(self.decode))
        if isinstance(self.only, str):
            object.__setattr__(self, "only", (self.only,))
        elif self.only is not None:
            codes = tuple(self.only) if isinstance(self.only, Iterable) else (self.only,)
            if not all(isinstance(code, str) for code in codes):
                raise ScheduleError(f"only={self.only!r}: name the languages to touch as codes, e.g. only=('deu',)")
            object.__setattr__(self, "only", codes)

    def select(self, ctx: ForwardContext, languages: Sequence[str] | str | None = None) -> Bool[Tensor, "batch tokens"]:
        """The tokens of the current forward pass this schedule touches (``languages``: of each example)."""
        prompt = ctx.valid & (ctx.decode_step == 0)
        generated = ctx.valid & (ctx.decode_step > 0)
        chosen = self._prefill(ctx, prompt) if prompt.any() else torch.zeros_like(prompt)
        if self.decode == "all":
            chosen = chosen | generated
        elif isinstance(self.decode, int):
            chosen = chosen | (generated & (ctx.decode_step <= self.decode))
        elif isinstance(self.decode, tuple):
            start, stop = self.decode
            steps = ctx.decode_step
            chosen = chosen | (generated & (steps >= (start or 1)) & (steps < stop if stop is not None else True))
        return chosen & self._gate(ctx, languages)[:, None]

    def excludes(self, language: str) -> bool:
        """Whether the schedule never touches an example in ``language`` (it is gated on other languages)."""
        return self.only is not None and language not in self.only

    def _prefill(self, ctx: ForwardContext, prompt: Tensor) -> Tensor:
        if isinstance(self.prefill, Tensor):
            if tuple(self.prefill.shape) != tuple(ctx.prompt_mask.shape):
                raise ScheduleError(
                    f"the prefill token mask has shape {tuple(self.prefill.shape)}, the prompt's input_ids "
                    f"{tuple(ctx.prompt_mask.shape)}"
                )
            inside = ctx.columns < self.prefill.shape[1]
            picked = torch.zeros_like(prompt)
            picked[:, inside] = self.prefill.to(prompt.device)[:, ctx.columns[inside]]
            return prompt & picked
        if self.prefill == "all":
            return prompt
        if self.prefill == "none":
            return torch.zeros_like(prompt)
        length = ctx.prompt_length[:, None]
        if self.prefill == "last":
            return prompt & (ctx.position == length - 1)
        start, stop = self.prefill
        first = 0 if start is None else (length + start if start < 0 else torch.full_like(length, start))
        end = length if stop is None else (length + stop if stop < 0 else torch.full_like(length, stop))
        short = (first < 0) | (end > length) | (first >= end)
        if short.any():
            row = int(short.flatten().nonzero()[0])
            raise ScheduleError(
                f"prefill={self.prefill!r} reaches past the prompt of example {int(ctx.example[row])}, "
                f"which has {int(length[row])} non-pad tokens"
            )
        return prompt & (ctx.position >= first) & (ctx.position < end)

    def _gate(self, ctx: ForwardContext, languages: Sequence[str] | str | None) -> Bool[Tensor, " batch"]:
        batch = ctx.valid.shape[0]
        device = ctx.valid.device
        if self.only is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if isinstance(languages, str):
            return torch.full((batch,), languages in self.only, device=device)
        if languages is None or int(ctx.example.max()) >= len(languages):
            raise ScheduleError(
                f"a schedule with only={list(self.only)} needs the language of each example "
                f"(this batch has {batch}): pass languages=[...] to steer() or handle.set_languages()"
            )
        return torch.tensor([languages[int(e)] in self.only for e in ctx.example.tolist()], device=device)


def gated(languages: Sequence[str], **schedule) -> Schedule:
    """A schedule applied only to examples in ``languages``: ``Schedule(only=languages, **schedule)``."""
    return Schedule(only=tuple(languages), **schedule)
