"""Hooks: one dispatcher per side of a module, so reads always see edited values, whatever the nesting order.

Every xlalign hook on one side (input or output) of one module runs inside a single torch hook, in stages:
first every *edit* (in registration order, each seeing the previous one's result), then every *read*, then
every *stop* (early exit). So ``record`` inside ``steer`` and ``steer`` inside ``record`` see the same,
edited value. A :class:`HookSet` registers hooks together and removes them together (also on exceptions and
KeyboardInterrupt); when the last xlalign hook leaves a module, its torch hook is removed too.

Hook functions see the hidden-state tensor of the module's output (or input: the first positional argument or
``hidden_states``), or with ``raw=True`` the whole output / ``(args, kwargs)``; an edit returns a replacement
(or None: unchanged); a read must return None.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any, Callable, Literal

from torch import Tensor, nn

from probes.model.sites import BackendError, SiteError

Stage = Literal["edit", "read", "stop"]
_STAGES: tuple[Stage, ...] = ("edit", "read", "stop")
_order = itertools.count()


class StopForward(Exception):
    """Raised inside the model after the last needed layer ran (early exit); the caller catches it."""


def first_tensor(value: object) -> Tensor:
    """The hidden-state tensor of a module output (transformers 5 returns tensors; older code, tuples)."""
    return value[0] if isinstance(value, (tuple, list)) else value  # type: ignore[index,return-value]


class _Entry:
    __slots__ = ("stage", "order", "fn", "name")

    def __init__(self, stage: Stage, fn: Callable, name: str) -> None:
        self.stage, self.order, self.fn, self.name = stage, next(_order), fn, name


def is_envoyed(module: nn.Module) -> bool:
    """Whether nnsight patched ``module``'s forward (it lives inside an nnsight model): its hooks then run from
    nnsight traces (:mod:`probes.model.envoys`), not from a torch hook."""
    return type(vars(module).get("forward")).__module__.startswith("nnsight.")


class _Dispatch(threading.local):
    depth = 0  # > 0 while xlalign runs an nnsight trace that dispatches the hooks


DISPATCH = _Dispatch()


def _outside_dispatch(module: nn.Module, *_) -> None:
    if DISPATCH.depth == 0:
        raise BackendError(
            f"a forward pass of this nnsight model reached {type(module).__name__} outside xlalign, so the record() "
            "or steer() blocks open on it would not apply; run it through xlalign (capture, trace, "
            "probes.capture.passes.forward / generate)"
        )


class _Point:
    """The xlalign hooks of one side of one module, behind one torch hook; inside an nnsight model the hooks run
    from nnsight traces (:mod:`probes.model.envoys`) and the torch hook only refuses passes that run elsewhere."""

    def __init__(self, module: nn.Module, side: str) -> None:
        self.entries: list[_Entry] = []
        if is_envoyed(module):
            self.handle = module.register_forward_pre_hook(_outside_dispatch)
            return
        if side == "output":
            self.handle = module.register_forward_hook(self._on_output)
        else:
            self.handle = module.register_forward_pre_hook(self._on_input, with_kwargs=True)

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (_STAGES.index(e.stage), e.order))

    def run(self, value: Any) -> tuple[Any, bool]:
        """Every hook on ``value`` in stage order: (the final value, whether an edit replaced it)."""
        changed = False
        for entry in self.entries:
            new = entry.fn(value)
            if new is None:
                continue
            if entry.stage != "edit":
                raise SiteError(
                    f"{entry.name}: a read-only hook returned a {type(new).__name__}; record() and trace() never "
                    "change activations: write them with steer(model, plan)"
                )
            value, changed = new, True
        return value, changed

    def _on_output(self, _module, _args, output):
        value, changed = self.run(output)
        return value if changed else None

    def _on_input(self, _module, args, kwargs):
        value, changed = self.run((args, kwargs))
        return value if changed else None


POINTS: weakref.WeakKeyDictionary[nn.Module, dict[str, _Point]] = weakref.WeakKeyDictionary()


def _tensor_fn(fn: Callable[[Tensor], Tensor | None], side: str) -> Callable[[Any], Any]:
    """Adapt a function of the hidden-state tensor to the raw value of ``side``."""
    if side == "output":

        def on_output(output):
            new = fn(first_tensor(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return on_output

    def on_input(value):
        args, kwargs = value
        new = fn(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    return on_input


class HookSet:
    """Hooks registered together and removed together; a context manager (``with HookSet() as hooks:``)."""

    def __init__(self) -> None:
        self._entries: list[tuple[nn.Module, str, _Entry]] = []

    def add(
        self, module: nn.Module, side: str, fn: Callable, *, stage: Stage = "read", raw: bool = False, name: str = ""
    ) -> None:
        """Run ``fn`` on ``side`` (``"input"`` or ``"output"``) of ``module`` at ``stage``; ``name`` labels errors."""
        if side not in ("input", "output") or stage not in _STAGES:
            raise SiteError(f"side must be 'input' or 'output' and stage one of {_STAGES}; got {side!r}, {stage!r}")
        points = POINTS.setdefault(module, {})
        point = points.get(side) or points.setdefault(side, _Point(module, side))
        entry = _Entry(stage, fn if raw else _tensor_fn(fn, side), name or f"{type(module).__name__}.{side}")
        point.add(entry)
        self._entries.append((module, side, entry))

    def remove(self) -> None:
        """Remove every hook of this set (idempotent)."""
        while self._entries:
            module, side, entry = self._entries.pop()
            points = POINTS.get(module, {})
            point = points.get(side)
            if point is None:
                continue
            point.entries = [e for e in point.entries if e is not entry]
            if not point.entries:
                point.handle.remove()
                del points[side]
                if not points:
                    POINTS.pop(module, None)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
