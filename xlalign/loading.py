"""Jobs take the loading options as one value, :class:`probes.model.Loading`; :func:`takes_loading` also lets a
Python caller pass its fields one by one (``device=``, ``dtype=``, ...), as the jobs always accepted."""

from __future__ import annotations

import functools
from typing import Callable

from probes.model import Loading
from xlalign.errors import JobError


def takes_loading(job: Callable) -> Callable:
    """Give ``job`` (which takes ``loading: Loading``) the keywords of every field of :class:`Loading`."""

    @functools.wraps(job)
    def call(*args, loading: Loading | None = None, **kwargs):
        given = {name: kwargs.pop(name) for name in Loading.names() if name in kwargs}
        if loading is not None and given:
            raise JobError(f"{job.__name__}: pass loading= or {', '.join(given)}, not both")
        return job(*args, loading=loading or Loading(**given), **kwargs)

    return call
