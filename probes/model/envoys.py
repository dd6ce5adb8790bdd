"""The nnsight backend: xlalign's hooks run from inside nnsight traces, at the modules' Envoys.

``nnsight_model(model, tokenizer)`` wraps a *copy* of the model in nnsight's ``TransformersModel`` (which patches
``forward`` on every submodule of the object it is given and switches its tokenizer to left padding). An nnsight
model, yours or that one, can be passed wherever xlalign takes a model. On its modules :class:`HookSet` registers
no torch hook: every forward pass xlalign runs (:func:`trace`, :func:`generate`) is an nnsight trace whose body
visits, in the order the model runs them, the Envoys of the modules that carry xlalign hooks, reads their
``.inputs`` / ``.output``, runs the same staged edits and reads as the ``hf`` backend, and assigns edited values
back (a replacement, as NDIF requires). Generation iterates with ``tracer.iter[:]``, the only form in which an
edit reaches every step; with no hooks on the model the body is empty instead (an open loop whose body asks
nnsight for nothing never yields to the model and never ends). Early exit is ``tracer.stop()``.
"""

from __future__ import annotations

import contextvars
import copy
import warnings
import weakref
from typing import Any, Callable

import torch
from torch import nn

from probes.model.architectures import unwrap
from probes.model.hooks import DISPATCH, POINTS, StopForward
from probes.model.sites import BackendError


def is_nnsight(model: object) -> bool:
    """Whether ``model`` is an nnsight model (an Envoy root wrapping a module), checked without importing nnsight."""
    return type(model).__module__.startswith("nnsight.") and hasattr(model, "_module")


def nnsight_model(model: nn.Module, tokenizer, *, copy_model: bool = True):
    """nnsight's ``TransformersModel`` around a copy of ``model`` (``copy_model=False``: around ``model`` itself,
    which it then changes) with a copy of ``tokenizer``; pass it wherever xlalign takes a model."""
    inner = copy.deepcopy(unwrap(model)) if copy_model else unwrap(model)
    return _transformers_model()(inner, tokenizer=copy.deepcopy(tokenizer))


def hosted_model(repo_id: str):
    """nnsight's ``TransformersModel`` of a hub model NDIF hosts, without its weights (config and tokenizer only:
    the weights stay on NDIF)."""
    lm = _transformers_model()(repo_id)
    return lm, lm.tokenizer


def _transformers_model():
    try:
        from nnsight import TransformersModel
    except ImportError as error:
        raise BackendError("backend 'nnsight' needs nnsight: pip install 'xlalign[nnsight]'") from error
    return TransformersModel


# Per wrapped model: its (module, side) events in the order a forward pass first reaches them.
_ORDER: weakref.WeakKeyDictionary[nn.Module, list[tuple[nn.Module, str]]] = weakref.WeakKeyDictionary()


def _execution_order(inner: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, side) events of one forward pass in the order they happen, from a two-token pass with
    temporary torch hooks (removed at once; the model is not changed)."""
    order = _ORDER.get(inner)
    if order is not None:
        return order
    events: list[tuple[nn.Module, str]] = []
    handles = []
    for module in inner.modules():
        handles.append(module.register_forward_pre_hook(lambda m, _a: events.append((m, "input"))))
        handles.append(module.register_forward_hook(lambda m, _a, _o: events.append((m, "output"))))
    DISPATCH.depth += 1  # xlalign's own pass: no hook runs in it
    try:
        with torch.inference_mode():
            inner(input_ids=torch.ones(1, 2, dtype=torch.long, device=next(inner.parameters()).device))
    finally:
        DISPATCH.depth -= 1
        for handle in handles:
            handle.remove()
    order = _ORDER[inner] = list(dict.fromkeys(events))
    return order


def _envoys(root) -> dict[nn.Module, Any]:
    return {envoy._module: envoy for envoy in root.modules()}


def _dispatch(events: list[tuple[Any, str, Any]]) -> bool:
    """Inside a trace: run the hooks of every (envoy, side, point) in order; True when a stop hook fired."""
    for envoy, side, point in events:
        value = envoy.inputs if side == "input" else envoy.output
        try:
            new, changed = point.run(value)
        except StopForward:
            return True
        if changed and side == "input":
            envoy.inputs = new
        elif changed:
            envoy.output = new
    return False


def _events(root) -> list[tuple[Any, str, Any]]:
    inner = root._module
    envoys = _envoys(root)
    events = []
    for module, side in _execution_order(inner):
        point = POINTS.get(module, {}).get(side)
        if point is not None:
            events.append((envoys[module], side, point))
    return events


def trace(model, context: contextvars.Context, *, output: bool = True, **inputs) -> Any:
    """``model(**inputs)`` as a trace of the nnsight model ``model``, its hooks run in ``context`` (the body runs
    elsewhere: give it the caller's ``contextvars.copy_context()``); the output, None after an early exit or
    with ``output=False`` (the pass then stops after the last hooked module, skipping e.g. the LM head)."""
    events = _events(model)
    holder: dict[str, Any] = {}
    DISPATCH.depth += 1
    try:
        with model.trace(**inputs) as tracer:
            if context.run(_dispatch, events) or not output:
                tracer.stop()
            holder["output"] = model.output
    finally:
        DISPATCH.depth -= 1
    return holder.get("output")


def generate(model, context: contextvars.Context, **kwargs) -> torch.Tensor:
    """``generate(**kwargs)`` of the nnsight model ``model``, every step's hooks run at its Envoys in ``context``."""
    events = _events(model)
    holder: dict[str, Any] = {}
    inner = model._module
    previous = vars(inner).get("generate")  # xlalign's marking wrapper while a steer/record block is open
    vars(inner)["generate"] = _capturing(inner.generate, holder)
    DISPATCH.depth += 1
    try:
        with warnings.catch_warnings():  # the open loop ends at the step generate does not make, by design
            warnings.filterwarnings("ignore", message=".*was never reached: the loop asked for a step")
            with model.generate(**kwargs) as tracer:
                if events:  # the loop ends only at a request the model never answers: without one it spins
                    for _step in tracer.iter[:]:
                        context.run(_dispatch, events)
    finally:
        DISPATCH.depth -= 1
        if previous is None:
            del vars(inner)["generate"]
        else:
            vars(inner)["generate"] = previous
    return holder["ids"]


def _capturing(generate: Callable, holder: dict) -> Callable:
    def capture(*args, **kwargs):
        holder["ids"] = generate(*args, **kwargs)
        return holder["ids"]

    return capture
