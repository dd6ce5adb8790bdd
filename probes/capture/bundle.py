"""A model, its tokenizer and the tokenisation to use, handed around as one value (nnterp's spirit): every public
function that takes ``(model, tokenizer, ..., tokenization=)`` takes a :class:`Bundle` in place of the three."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from probes.capture.tokenization import Tokenization
from probes.errors import XlalignError


class BundleError(XlalignError):
    """A bundle given together with the tokenisation it already holds."""


@dataclass(frozen=True)
class Bundle:
    """``model`` (a spec is loaded: ``Bundle.load``), its ``tokenizer`` and the ``tokenization`` every pass uses."""

    model: Any
    tokenizer: Any
    tokenization: Tokenization = Tokenization()

    @classmethod
    def load(cls, spec, tokenizer=None, *, tokenization: Tokenization = Tokenization(), **loading) -> Bundle:
        """A bundle of the model ``spec`` names (or a model object) loaded with ``loading`` (:class:`probes.model.Loading`'s
        fields: ``device``, ``dtype``, ``backend``, ...)."""
        from probes.model import Loading

        model, tokenizer = Loading(**loading).resolve(spec, tokenizer)
        return cls(model, tokenizer, tokenization)


def takes_bundle(fn: Callable) -> Callable:
    """Let ``fn(model, tokenizer, ..., tokenization=)`` be called as ``fn(bundle, ...)``."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if args:
            first, rest = args[0], args[1:]
        elif "model" in kwargs:
            first, rest = kwargs.pop("model"), ()
        else:
            return fn(**kwargs)
        if not isinstance(first, Bundle):
            return fn(first, *rest, **kwargs)
        if "tokenization" in kwargs or "tokenizer" in kwargs:
            raise BundleError(f"{fn.__name__}: the bundle holds the tokenizer and tokenization; pass one or the other")
        return fn(first.model, first.tokenizer, *rest, tokenization=first.tokenization, **kwargs)

    return call


def model_of(model):
    """The model of a bundle, or ``model`` itself (for functions that take the model alone: steer, record)."""
    return model.model if isinstance(model, Bundle) else model
