"""Artifacts on disk: one safetensors file holding tensors and JSON metadata, safe to load (no pickle).

The metadata names the artifact's kind, the model it was found on (identity and sizes), sites, languages,
method and parameters, and the package version. :func:`check_model` compares it with the model an
artifact is about to be applied to and says exactly what differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes import __version__
from probes.atomic import atomic_path

_KEY = "xlalign"
# Identity fields that must agree; the name may differ (a local copy of the same weights).
_IDENTITY = ("model_type", "n_layers", "hidden_size", "config_sha256")


class ArtifactError(ValueError):
    """An artifact that cannot be written, read, or applied to this model."""


def save_artifact(path: str | os.PathLike, kind: str, tensors: dict[str, Tensor], meta: dict, *, overwrite: bool = False) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-serialisable) to ``path`` atomically; never replaces a file silently."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} exists; choose another path or pass overwrite=True")
    header = {"kind": kind, "version": __version__, **meta}
    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata={_KEY: json.dumps(header)})
    return path


def load_artifact(path: str | os.PathLike, kind: str) -> tuple[dict[str, Tensor], dict]:
    """Read an artifact of ``kind``; the error says what the file holds instead."""
    meta, tensors = _read(path, with_tensors=True)
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}")
    return tensors, meta


def artifact_kind(path: str | os.PathLike) -> str:
    """The kind of artifact stored at ``path`` ('NeuronSet', 'ShiftVector', 'LinearMap', ...)."""
    return _read(path, with_tensors=False)[0].get("kind", "?")


def _read(path: str | os.PathLike, *, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            header = (handle.metadata() or {}).get(_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()} if with_tensors else {}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{path} is not a readable safetensors file: {error}") from None
    if header is None:
        raise ArtifactError(f"{path} is a safetensors file without xlalign metadata")
    return json.loads(header), tensors


def check_model(meta: dict, model, *, where: str = "artifact") -> None:
    """Raise :class:`ArtifactError` listing every identity field where ``model`` differs from ``meta['model']``."""
    from probes.models import model_identity

    found = meta.get("model", {})
    actual = model_identity(model)
    problems = [f"{key}: {where} has {found.get(key)!r}, model has {actual[key]!r}" for key in _IDENTITY if found.get(key) != actual[key]]
    if problems:
        raise ArtifactError(
            f"{where} was made on model {found.get('name')!r}, not on {actual['name']!r}:\n  " + "\n  ".join(problems)
        )
