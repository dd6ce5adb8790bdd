"""One shard of an ActivationStore: the pooled tensors of some rows of one language, in a safetensors file whose
header also says what they are (language, index, rows, the model's weight fingerprint, a SHA-256 per tensor).

So a damaged shard (bytes flipped, truncated, zeroed), a misplaced one (another language's shard copied over it)
and a store whose metadata was edited (another model, another sentence count) are found when a shard is read,
instead of being measured silently; a check also refuses a tensor holding inf or NaN.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes.data.files import atomic_path

_KEY = "xlalign_shard"
_NON_FINITE = (
    "holds non-finite values (inf/NaN): the model overflowed in its dtype (capture in bfloat16 or float32) "
    "or the file was altered"
)


@dataclass(frozen=True)
class ShardInfo:
    """What a shard must hold: rows ``start:stop`` of ``language`` (shard ``index``) from the model whose
    weights hash to ``weights``, one tensor per site."""

    language: str
    index: int
    start: int
    stop: int
    weights: str


class ShardDamage(Exception):
    """A shard that is not what the store says it is; the message says how."""


def digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's bytes (as stored, whatever its dtype)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def write_shard(path: Path, tensors: dict[str, Tensor], info: ShardInfo) -> None:
    """Write ``tensors`` ({site name: (rows, *shape)}) with their description, atomically."""
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    header = {**asdict(info), "sha256": {name: digest(tensor) for name, tensor in contiguous.items()}}
    try:
        with atomic_path(path) as temporary:
            save_file(contiguous, temporary, metadata={_KEY: json.dumps(header)})
    except OSError:
        raise
    except Exception as error:  # safetensors reports a full disk as its own error type
        raise OSError(f"writing {path} failed ({error}); is the disk full? Nothing partial was left") from None


def _header(handle, expected: ShardInfo, sites: list[str]) -> dict:
    raw = (handle.metadata() or {}).get(_KEY)
    if raw is None:
        raise ShardDamage("it carries no xlalign shard header (not written by this xlalign, or overwritten)")
    header = json.loads(raw)
    found = {key: header.get(key) for key in asdict(expected)}
    if found != asdict(expected):
        differs = [
            f"{key} {found[key]!r} (expected {value!r})"
            for key, value in asdict(expected).items()
            if found[key] != value
        ]
        raise ShardDamage(f"it holds {', '.join(differs)}")
    if sorted(handle.keys()) != sorted(sites) or sorted(header.get("sha256", {})) != sorted(sites):
        raise ShardDamage(f"it holds sites {sorted(handle.keys())}, the store {sorted(sites)}")
    return header


def read_tensor(path: Path, site: str, expected: ShardInfo, sites: list[str]) -> Tensor:
    """The tensor of ``site``, after checking the shard's header and the tensor's checksum."""
    try:
        with safe_open(path, framework="pt") as handle:
            header = _header(handle, expected, sites)
            tensor = handle.get_tensor(site)
    except ShardDamage:
        raise
    except Exception as error:  # safetensors raises its own types for truncated or corrupt files
        raise ShardDamage(f"it is not a readable safetensors file ({error})") from None
    if digest(tensor) != header["sha256"][site]:
        raise ShardDamage(f"the bytes of {site} do not match their checksum")
    if len(tensor) != expected.stop - expected.start:
        raise ShardDamage(f"{site} has {len(tensor)} rows, the shard {expected.stop - expected.start}")
    return tensor


def damage(path: Path, expected: ShardInfo, sites: list[str]) -> str | None:
    """Why the shard at ``path`` is damaged or missing (every tensor verified, inf and NaN refused), or None when
    it is good."""
    if not path.is_file():
        return "missing"
    try:
        for site in sites:
            if not bool(torch.isfinite(read_tensor(path, site, expected, sites)).all()):
                return f"{site} {_NON_FINITE}"
    except ShardDamage as problem:
        return str(problem)
    return None
