"""xlalign probes: read a multilingual model (data, model access, recording, analysis, finders, artifacts).

Importing ``probes`` is cheap: the sub-packages (and torch) load on first use of a name.
"""

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "ParallelCorpus": "probes.data",
    "load_corpus": "probes.data",
    "load_model": "probes.model",
    "Site": "probes.model",
    "Tokenization": "probes.capture",
    "Activations": "probes.analysis",
    "ActivationStore": "probes.capture",
    "XlalignError": "probes.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
