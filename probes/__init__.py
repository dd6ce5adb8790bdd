"""xlalign probes: read a multilingual model (capture, store, metrics, finders).

Importing ``probes`` is cheap: submodules (and torch) load on first use of a name.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ParallelCorpus": "probes.corpus",
    "load_corpus": "probes.corpus",
    "load_model": "probes.models",
    "Site": "probes.sites",
    "ActivationStore": "probes.store",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
