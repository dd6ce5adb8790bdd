"""Artifacts on disk: one safetensors file holding tensors and JSON metadata, safe to load (no pickle).

The metadata names the artifact's kind, its format and the xlalign version that wrote it, the model it was
found on (identity with weight fingerprint: :mod:`probes.model.identity`), sites, languages, method and
parameters. :meth:`Artifact.load` with a model checks all of it and says exactly what differs; files are written
atomically, never over an existing file unless asked, with the user's umask.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, TypeVar

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from probes import __version__
from probes.data.files import atomic_path
from probes.model.architectures import locate, model_type, site_shape
from probes.model.identity import identity_mismatches, model_identity
from probes.model.sites import Site, SiteError

_KEY = "xlalign"
FORMAT = 2  # the metadata layout; files of another format are refused
A = TypeVar("A", bound="Artifact")


class ArtifactError(ValueError):
    """An artifact that cannot be written, read, or applied to this model."""


class Artifact:
    """Base of NeuronSet, ShiftVector and LinearMap: subclasses give ``KIND``, their tensors and metadata."""

    KIND: ClassVar[str]
    model: dict

    def tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def metadata(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_parts(cls: type[A], tensors: dict[str, Tensor], meta: dict, where: str) -> A:
        raise NotImplementedError

    def check_fits(self, model: nn.Module, *, where: str) -> None:
        """Raise :class:`ArtifactError` if a site, unit or shape of the artifact does not exist in ``model``."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a safetensors artifact atomically; refuses to replace a file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArtifactError(f"{path} exists; choose another path or pass overwrite=True")
        header = {"kind": self.KIND, "format": FORMAT, "version": __version__, "model": dict(self.model),
                  **self.metadata()}  # fmt: skip
        try:
            with atomic_path(path) as temporary:
                save_file({k: v.contiguous() for k, v in self.tensors().items()}, temporary,
                          metadata={_KEY: json.dumps(header)})  # fmt: skip
        except OSError:
            raise
        except Exception as error:  # safetensors reports a full disk as its own error type
            raise OSError(f"writing {path} failed ({error}); is the disk full? Nothing partial was left") from None
        return path

    @classmethod
    def load(cls: type[A], path: str | os.PathLike, model: nn.Module | None = None) -> A:
        """Read a saved artifact; with ``model``, check it was made on that model and fits its sizes."""
        meta, tensors = read_artifact(path, with_tensors=True)
        if meta.get("kind") != cls.KIND:
            raise ArtifactError(f"{path} holds a {meta.get('kind')!r}, not a {cls.KIND!r}")
        try:
            loaded = cls.from_parts(tensors, meta, str(path))
        except KeyError as missing:
            raise ArtifactError(f"{path}: {cls.KIND} artifact lacks {missing}; the file is damaged") from None
        if model is not None:
            check_model(meta, model, where=str(path))
            loaded.check_fits(model, where=str(path))
        return loaded


def artifact_kind(path: str | os.PathLike) -> str:
    """The kind of artifact stored at ``path`` ('NeuronSet', 'ShiftVector', 'LinearMap', ...)."""
    return read_artifact(path, with_tensors=False)[0].get("kind", "?")


def read_artifact(path: str | os.PathLike, *, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    """The metadata (and tensors) of an artifact file; its format must be this version's."""
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
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: its xlalign metadata is not valid JSON ({error.msg})") from None
    if meta.get("format", 1) != FORMAT:
        raise ArtifactError(
            f"{path} was written by xlalign {meta.get('version', '< 0.2')} in artifact format {meta.get('format', 1)}; "
            f"this xlalign ({__version__}) reads format {FORMAT}: find it again with this version"
        )
    return meta, tensors


def check_model(meta: dict, model: nn.Module, *, where: str = "artifact") -> None:
    """Raise :class:`ArtifactError` listing how ``model`` differs from the one ``meta['model']`` names."""
    found = meta.get("model", {})
    actual = model_identity(model)
    problems = identity_mismatches(found, actual, exact=False)
    if problems:
        raise ArtifactError(
            f"{where} was made on model {found.get('name')!r}, not on {actual['name']!r}:\n  " + "\n  ".join(problems)
        )


def check_site(model: nn.Module, site: Site, tensor: Tensor, expected: tuple[int, ...], *, what: str, where: str) -> None:
    """Raise unless ``site`` exists in ``model`` and ``tensor`` has the ``expected`` shape."""
    try:
        locate(model, site)
    except SiteError as error:
        raise ArtifactError(f"{where}: {error}") from None
    if tuple(tensor.shape) != tuple(expected):
        raise ArtifactError(
            f"{where}: {what} at {site} has shape {tuple(tensor.shape)}, but this {model_type(model)} model "
            f"needs {tuple(expected)} there"
        )


def site_vector_shape(model: nn.Module, site: Site) -> tuple[int, ...]:
    """The per-token shape of ``site`` in ``model`` (an artifact error if the site does not exist)."""
    try:
        return site_shape(model, site)
    except SiteError as error:
        raise ArtifactError(str(error)) from None
