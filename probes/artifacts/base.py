"""Artifacts on disk: one safetensors file holding tensors and JSON metadata, safe to load (no pickle).

The metadata names the artifact's kind, its format and the xlalign version that wrote it, the model it was
found on (identity with weight fingerprint: :mod:`probes.model.identity`), sites, languages, method and
parameters. :meth:`Artifact.load` with a model checks all of it and says exactly what differs; files are written
atomically, never over an existing file unless asked, with the user's umask.

Integrity: the metadata carries a SHA-256 over the tensors (names, dtypes, shapes, bytes) and the metadata itself
(canonical JSON without the digest), written on save and checked on load, so a flipped bit or an edited field is
refused instead of steering silently. Non-finite tensors are refused on save and on load, and on load the metadata
must describe exactly the tensors the file holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar, Mapping, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from probes import __version__
from probes.data.files import atomic_path
from probes.model.architectures import locate, model_type, site_shape
from probes.model.identity import identity_mismatches, model_identity
from probes.model.sites import Site, SiteError
from probes.errors import XlalignError

_KEY = "xlalign"
_DIGEST = "sha256"
FORMAT = 3  # the metadata layout (3: with a SHA-256 of tensors and metadata); files of another format are refused
FIND_AGAIN = "find it again with this version (xlalign find)"
A = TypeVar("A", bound="Artifact")


class ArtifactError(XlalignError):
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
        """Write a safetensors artifact atomically, with its SHA-256; refuses to replace a file unless
        ``overwrite``, and refuses non-finite tensors."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArtifactError(f"{path} exists; choose another path or pass overwrite=True")
        tensors = {name: tensor.detach().contiguous() for name, tensor in self.tensors().items()}
        for name, tensor in tensors.items():
            problem = nonfinite(tensor)
            if problem:
                raise ArtifactError(
                    f"{path}: not written: tensor {name!r} of this {self.KIND} has {problem}; "
                    f"an artifact must hold finite numbers (check what it was fitted on)"
                )
        header = {"kind": self.KIND, "format": FORMAT, "version": __version__, "model": dict(self.model)}
        header = json.loads(json.dumps(header | self.metadata()))  # as it will read back (tuples become lists)
        header[_DIGEST] = artifact_digest(tensors, header)
        try:
            with atomic_path(path) as temporary:
                save_file(tensors, temporary, metadata={_KEY: json.dumps(header)})
        except OSError:
            raise
        except Exception as error:  # safetensors reports a full disk as its own error type
            raise OSError(f"writing {path} failed ({error}); is the disk full? Nothing partial was left") from None
        return path

    @classmethod
    def load(cls: type[A], path: str | os.PathLike, model: nn.Module | None = None) -> A:
        """Read a saved artifact (its SHA-256, finite tensors and metadata checked); with ``model``, check it was
        made on that model and fits its sizes."""
        meta, tensors = read_artifact(path, with_tensors=True)
        if meta.get("kind") != cls.KIND:
            raise ArtifactError(f"{path} holds a {meta.get('kind')!r}, not a {cls.KIND!r}")
        try:
            loaded = cls.from_parts(tensors, meta, str(path))
        except KeyError as missing:
            message = f"{path}: {cls.KIND} artifact lacks {missing}; the file is damaged: {FIND_AGAIN}"
            raise ArtifactError(message) from None
        except ValueError as error:
            raise ArtifactError(f"{path}: its metadata does not fit its tensors ({error}); {FIND_AGAIN}") from None
        check_consistent(loaded, meta, tensors, where=str(path))
        if model is not None:
            check_model(meta, model, where=str(path))
            loaded.check_fits(model, where=str(path))
        return loaded


def artifact_kind(path: str | os.PathLike) -> str:
    """The kind of artifact stored at ``path`` ('NeuronSet', 'ShiftVector', 'LinearMap', ...)."""
    return read_artifact(path, with_tensors=False)[0].get("kind", "?")


def read_artifact(path: str | os.PathLike, *, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    """The metadata (and tensors) of an artifact file; its format must be this version's. With the tensors, its
    SHA-256 is checked and every tensor must be finite."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            header = (handle.metadata() or {}).get(_KEY)
            # copies: safetensors maps the file, so a file changed in place later would change what was checked
            tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()} if with_tensors else {}
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
            f"this xlalign ({__version__}) reads format {FORMAT}: {FIND_AGAIN}"
        )
    recorded = meta.pop(_DIGEST, None)
    if with_tensors:
        if recorded != artifact_digest(tensors, meta):
            raise ArtifactError(
                f"{path}: its tensors or metadata do not match the SHA-256 written with them: the file "
                f"was changed or damaged after it was written; {FIND_AGAIN}"
            )
        for name, tensor in tensors.items():
            problem = nonfinite(tensor)
            if problem:
                raise ArtifactError(
                    f"{path}: tensor {name!r} has {problem}; an artifact must hold finite numbers: {FIND_AGAIN}"
                )
    return meta, tensors


def artifact_digest(tensors: Mapping[str, Tensor], meta: Mapping) -> str:
    """SHA-256 over ``tensors`` (name, dtype, shape and bytes of each, by name) and ``meta`` (canonical JSON,
    without the digest itself)."""
    sha = hashlib.sha256()
    body = {key: value for key, value in meta.items() if key != _DIGEST}
    sha.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(b"\0" + json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def nonfinite(tensor: Tensor) -> str | None:
    """None if every value of ``tensor`` is finite, else what is wrong ('2 of 64 values not finite (nan at (5,))')."""
    tensor = torch.as_tensor(tensor)
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    bad = ~torch.isfinite(tensor)
    if not bad.any():
        return None
    first = tuple(int(i) for i in bad.nonzero()[0])
    return f"{int(bad.sum())} of {tensor.numel()} values not finite ({tensor[first].item()} at index {first})"


def check_consistent(artifact: Artifact, meta: dict, tensors: Mapping[str, Tensor], *, where: str) -> None:
    """Raise unless ``meta`` describes exactly the tensors of the file the ``artifact`` was read from."""
    described = artifact.tensors()
    if set(described) != set(tensors):
        named = "".join(f" ({key} {meta[key]})" for key in ("layers", "languages") if key in meta)
        raise ArtifactError(
            f"{where}: its metadata{named} describes tensors {sorted(described)}, but the file holds "
            f"{sorted(tensors)}; the file was changed or damaged after it was written: {FIND_AGAIN}"
        )
    for name, tensor in described.items():
        if tensor.shape != tensors[name].shape or tensor.dtype != tensors[name].dtype:
            raise ArtifactError(
                f"{where}: tensor {name!r} is {tensors[name].dtype} {tuple(tensors[name].shape)} in "
                f"the file, its metadata makes it {tensor.dtype} {tuple(tensor.shape)}: {FIND_AGAIN}"
            )
    for key, value in json.loads(json.dumps(artifact.metadata())).items():
        if meta.get(key) != value:
            raise ArtifactError(
                f"{where}: its metadata says {key} {meta.get(key)!r}, its tensors give {value!r}; the "
                f"file was changed or damaged after it was written: {FIND_AGAIN}"
            )


def check_model(meta: dict, model: nn.Module, *, where: str = "artifact") -> None:
    """Raise :class:`ArtifactError` listing how ``model`` differs from the one ``meta['model']`` names."""
    found = meta.get("model", {})
    actual = model_identity(model)
    problems = identity_mismatches(found, actual, exact=False)
    if problems:
        raise ArtifactError(
            f"{where} was made on model {found.get('name')!r}, not on {actual['name']!r}:\n  " + "\n  ".join(problems)
        )


def check_site(
    model: nn.Module, site: Site, tensor: Tensor, expected: tuple[int, ...], *, what: str, where: str
) -> None:
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
