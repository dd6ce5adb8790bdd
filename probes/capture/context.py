"""What every token of the current forward pass is, derived from that pass alone.

A :class:`ForwardContext` says, per token, whether it is valid (not padding), its position among its
example's non-pad tokens, and its decode step (0: prompt; s >= 1: the s-th generated token), plus which
example each row is. It comes from the attention mask and the cache length of the pass, and, for the prompt's
width, from the pass itself (a plain forward pass is always a fresh prompt), from the ``generate()`` call it
belongs to (so generation without a KV cache, which re-runs the whole sequence, is read like cached
generation), or from the KV cache it continues. Nothing is remembered from earlier calls.

One :class:`PassTracker` per model computes the context once per forward pass for every ``record`` and
``steer`` open on it. While any is open, ``model.generate`` is shadowed on the instance by a thin wrapper that
marks the generate call; it is removed when the last one closes.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from probes.capture.tokenization import Batch
from probes.model.architectures import decoder, unwrap
from probes.model.hooks import HookSet
from probes.errors import XlalignError


class ContextError(XlalignError):
    """A forward pass whose tokens cannot be told apart (prompt vs generated)."""


@dataclass(frozen=True)
class ForwardContext:
    """The tokens of one forward pass (``batch`` rows x ``tokens`` new columns)."""

    valid: Bool[Tensor, "batch tokens"]  # non-pad tokens
    position: Int[Tensor, "batch tokens"]  # index among the example's non-pad tokens
    prompt_length: Int[Tensor, " batch"]  # non-pad prompt tokens per example
    decode_step: Int[Tensor, "batch tokens"]  # 0 for prompt tokens, s >= 1 for the s-th generated token
    prompt_mask: Bool[Tensor, "batch prompt_columns"]  # the prompt's padded layout, for token-mask schedules
    columns: Int[Tensor, " tokens"]  # column of each token in the padded full sequence
    example: Int[Tensor, " batch"]  # which example each row is (the text's index in xlalign's loops)
    counted: Bool[Tensor, "batch tokens"]  # tokens pooling and statistics count (valid, BOS dropped if asked)
    input_ids: Int[Tensor, "batch tokens"] | None
    call: int  # one id per prompt (all passes of one generate call share it)
    first_new: int  # columns before it were already seen (generation without cache re-runs them)


@dataclass(frozen=True)
class _BatchInfo:
    call: int
    batch: Batch


@dataclass
class _Generation:
    owner: nn.Module
    call: int
    prompt_width: int | None = None
    seen: int = 0  # columns already run in this generate call


_calls = itertools.count()
_BATCH: ContextVar[_BatchInfo | None] = ContextVar("xlalign_batch", default=None)
_GENERATION: ContextVar[_Generation | None] = ContextVar("xlalign_generation", default=None)
# KV caches filled by a fresh prompt while a tracker was on: cache -> (prompt width, call).
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def new_call() -> int:
    return next(_calls)


@contextmanager
def batch_context(batch: Batch, call: int) -> Iterator[None]:
    """While xlalign runs ``batch``, passes name its texts' indices as examples and its token mask as counted."""
    token = _BATCH.set(_BatchInfo(call, batch))
    try:
        yield
    finally:
        _BATCH.reset(token)


class PassTracker:
    """Computes the :class:`ForwardContext` of each forward pass of one model (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)
        self.current: ForwardContext | None = None
        self.listeners: list[Callable[[ForwardContext], None]] = []
        self.users = 0
        self._prompt_call: tuple[int, int] | None = None  # (width, call) of a fresh prompt pass, for its new cache
        self._hooks = HookSet()
        self._hooks.add(decoder(self.model), "input", self._on_forward, raw=True, name="decoder")
        self._hooks.add(decoder(self.model), "output", self._on_output, raw=True, name="decoder")
        self._previous_generate = vars(self.model).get("generate")
        if hasattr(self.model, "generate"):
            self.model.generate = _marking_generate(self.model, self.model.generate)

    def close(self) -> None:
        self._hooks.remove()
        if hasattr(self.model, "generate"):
            if self._previous_generate is None:
                vars(self.model).pop("generate", None)
            else:
                self.model.generate = self._previous_generate

    def _on_forward(self, value) -> None:
        args, kwargs = value
        ids = kwargs.get("input_ids", args[0] if args else None)
        reference = ids if ids is not None else kwargs["inputs_embeds"]
        batch, tokens = reference.shape[:2]
        device = reference.device
        mask, cache = kwargs.get("attention_mask"), kwargs.get("past_key_values")
        if mask is not None and mask.dim() != 2:
            raise ContextError(f"xlalign needs a 2-D attention mask (batch, columns); got shape {tuple(mask.shape)}")
        past = mask.shape[1] - tokens if mask is not None else _cache_length(cache)
        if past < 0:
            raise ContextError(f"the attention mask has {mask.shape[1]} columns for {tokens} input tokens")
        if mask is None:
            mask = torch.ones(batch, past + tokens, dtype=torch.long, device=device)
        width, call, first_new = self._prompt(past, tokens, cache)
        columns = past + torch.arange(tokens, device=device)
        valid = mask[:, -tokens:].bool()
        info = _BATCH.get()
        rows = info.batch.rows.to(device) if info is not None and len(info.batch.rows) == batch else None
        counted = valid
        if info is not None and past == 0 and info.batch.token_mask.shape == valid.shape:
            counted = info.batch.token_mask.to(device)
        prompt_mask = mask[:, :width].bool()
        self.current = ForwardContext(
            valid=valid,
            position=(mask.cumsum(dim=1) - 1)[:, -tokens:],
            prompt_length=prompt_mask.sum(dim=1),
            decode_step=(columns - width + 1).clamp(min=0).expand(batch, tokens),
            prompt_mask=prompt_mask,
            columns=columns,
            example=rows if rows is not None else torch.arange(batch, device=device),
            counted=counted,
            input_ids=ids,
            call=info.call if info is not None else call,
            first_new=first_new,
        )
        for listener in self.listeners:
            listener(self.current)

    def _on_output(self, output) -> None:
        """Remember the KV cache a fresh prompt created, so a manual decode loop can continue it."""
        cache = getattr(output, "past_key_values", None)
        if cache is not None and self._prompt_call is not None:
            _remember_cache(cache, *self._prompt_call)

    def _prompt(self, past: int, tokens: int, cache) -> tuple[int, int, int]:
        """(prompt width in columns, call id, first new column) of this pass."""
        self._prompt_call = None
        generation = _GENERATION.get()
        if generation is not None and generation.owner is self.model:
            if generation.prompt_width is None:  # the first pass of a generate call is its prompt
                generation.prompt_width = past + tokens
            first_new = max(past, generation.seen)
            generation.seen = past + tokens
            return generation.prompt_width, generation.call, first_new
        if past == 0:
            call = new_call()
            self._prompt_call = (tokens, call)
            if cache is not None:
                _remember_cache(cache, tokens, call)
            return tokens, call, 0
        if cache is None:
            raise ContextError(
                f"the attention mask has {past + tokens} columns for {tokens} input tokens and no KV cache is passed; "
                "give a mask covering exactly the input (or the cache and the input)"
            )
        known = _CACHES.get(cache)
        if known is None:
            raise ContextError(
                f"this forward pass continues a KV cache of {past} tokens that was filled outside xlalign's hooks, "
                "so its prompt and generated tokens cannot be told apart; run the prompt's forward pass inside the "
                "same steer()/record() block, or use model.generate"
            )
        return known[0], known[1], past


def _cache_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    raise ContextError(f"cannot read the length of a {type(cache).__name__} cache; pass an attention_mask")


def _remember_cache(cache, width: int, call: int) -> None:
    try:
        _CACHES[cache] = (width, call)
    except TypeError:  # a legacy tuple cache cannot be weakly referenced; continuing it is then an error
        pass


@contextmanager
def generating(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s forward passes are one generation (prompt first, then decode steps)."""
    token = _GENERATION.set(_Generation(model, new_call()))
    try:
        yield
    finally:
        _GENERATION.reset(token)


def generation_context(model: nn.Module) -> contextvars.Context:
    """A copy of the caller's context in which ``model``'s forward passes are one generation, as inside
    :func:`generating` (for hooks a backend runs elsewhere, in a context it is given: nnsight's trace bodies)."""
    context = contextvars.copy_context()
    context.run(_GENERATION.set, _Generation(model, new_call()))
    return context


def _marking_generate(model: nn.Module, generate: Callable) -> Callable:
    """``generate`` that marks ``model``'s forward passes as one generation."""

    @functools.wraps(generate)
    def marked(*args, **kwargs):
        with generating(model):
            return generate(*args, **kwargs)

    return marked


_TRACKERS: weakref.WeakKeyDictionary[nn.Module, PassTracker] = weakref.WeakKeyDictionary()


@contextmanager
def tracking(model: nn.Module, listener: Callable[[ForwardContext], None] | None = None) -> Iterator[PassTracker]:
    """The model's shared :class:`PassTracker` while the block runs (``listener`` sees each new context)."""
    inner = unwrap(model)
    tracker = _TRACKERS.get(inner)
    if tracker is None:
        tracker = _TRACKERS[inner] = PassTracker(inner)
    tracker.users += 1
    if listener is not None:
        tracker.listeners.append(listener)
    try:
        yield tracker
    finally:
        if listener is not None:
            tracker.listeners.remove(listener)
        tracker.users -= 1
        if tracker.users == 0:
            tracker.close()
            del _TRACKERS[inner]
