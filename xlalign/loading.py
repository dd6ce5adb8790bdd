"""Jobs take the loading options as one value, :class:`probes.model.Loading`; :func:`takes_loading` also lets a
Python caller pass its fields one by one (``device=``, ``dtype=``, ...), as the jobs always accepted, and a
:class:`probes.capture.Bundle` as ``model=`` in place of the model, its tokenizer and tokenisation."""

from __future__ import annotations

import functools
from typing import Callable

from probes.capture.bundle import Bundle
from probes.model import Loading
from xlalign.errors import JobError


def takes_loading(job: Callable) -> Callable:
    """Give ``job`` (which takes ``loading: Loading``) the keywords of every field of :class:`Loading`."""

    @functools.wraps(job)
    def call(*args, loading: Loading | None = None, **kwargs):
        bundle = kwargs.get("model")
        if isinstance(bundle, Bundle):  # a model, its tokenizer and tokenisation as one value
            if "tokenization" in kwargs or kwargs.get("tokenizer") is not None:
                raise JobError(f"{job.__name__}: the bundle holds the tokenizer and tokenization; do not pass them too")
            kwargs.update(model=bundle.model, tokenizer=bundle.tokenizer, tokenization=bundle.tokenization)
        given = {name: kwargs.pop(name) for name in Loading.names() if name in kwargs}
        if loading is not None and given:
            raise JobError(f"{job.__name__}: pass loading= or {', '.join(given)}, not both")
        return job(*args, loading=loading or Loading(**given), **kwargs)

    return call
