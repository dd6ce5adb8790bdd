"""The method registry: :data:`steer.choices.REGISTRY` names each method's record; :func:`register` adds one at
run time (a method of your own, evaluated and found like the built-in ones)."""

from __future__ import annotations

import warnings
from importlib import import_module

from steer.choices import REGISTRY, RENAMED
from steer.errors import EvaluationError
from steer.methods.record import Method

_ADDED: dict[str, Method] = {}


def names() -> list[str]:
    """Every registered method, in the evaluation grid's order."""
    return [*REGISTRY, *(name for name in _ADDED if name not in REGISTRY)]


def canonical(name: str) -> str:
    """``name`` as the registry spells it (an earlier release's name gives a FutureWarning)."""
    if name in RENAMED and name not in _ADDED:
        warnings.warn(
            f"method {name!r} is now called {RENAMED[name]!r}; the old name goes in the next release",
            FutureWarning,
            stacklevel=3,
        )
        return RENAMED[name]
    return name


def method(name: str) -> Method:
    """The record of the method called ``name``."""
    name = canonical(name)
    if name in _ADDED:
        return _ADDED[name]
    if name not in REGISTRY:
        raise EvaluationError(f"unknown method {name!r}; choose from {', '.join(names())}")
    module, attribute = REGISTRY[name].split(":")
    record = getattr(import_module(module), attribute)
    if record.name != name:
        raise EvaluationError(f"the registry's {name!r} points to the record of {record.name!r}")
    return record


def register(record: Method) -> Method:
    """Add ``record`` to the registry (it replaces an earlier registration of the same name, not a built-in)."""
    if record.name in REGISTRY:
        raise EvaluationError(f"{record.name!r} is a built-in method; give yours another name")
    _ADDED[record.name] = record
    return record


def unregister(name: str) -> None:
    """Remove a method :func:`register` added."""
    _ADDED.pop(name, None)
