"""Control-vector GGUF files as llama.cpp reads them (``common/common.cpp``, ``common_control_vector_load_one``).

A file has ``general.architecture = "controlvector"``, optionally ``controlvector.model_hint`` (the target's
architecture) and ``controlvector.layer_count``, and one 1-D F32 tensor ``direction.N`` per steered block ``N``
(``N >= 1``: llama.cpp refuses the whole file for ``direction.0``, an unparsable name, a non-F32 or non-1-D
tensor, or tensors of different widths). repeng's ``export_gguf`` and llama.cpp's ``cvector-generator`` write
this layout; xlalign adds its provenance under ``xlalign.*`` keys, which llama.cpp ignores.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from probes import __version__
from probes.data.files import atomic_path
from xlalign.export.plan import ControlVector, ControlVectorError

ARCH = "controlvector"
CONVENTION = "direction.N is added to the output of block N counted from 0 (xlalign resid.N+1), before the next block"
_NAME = re.compile(r"direction\.(\d+)")


def write_control_vector(vector: ControlVector, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``vector`` as a llama.cpp control-vector GGUF file, atomically (nothing is left on error)."""
    import gguf

    path = Path(path)
    if path.exists() and not overwrite:
        raise ControlVectorError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not vector.directions:
        raise ControlVectorError(f"{path}: a control vector needs at least one direction")
    with atomic_path(path) as temporary:
        writer = gguf.GGUFWriter(temporary, ARCH)
        if vector.model_hint:
            writer.add_string(f"{ARCH}.model_hint", vector.model_hint)
        writer.add_int32(f"{ARCH}.layer_count", len(vector.directions))
        for key, value in vector.metadata.items():
            writer.add_string(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for block, direction in sorted(vector.directions.items()):
            array = direction.detach().to(torch.float32).cpu().numpy()
            if not np.isfinite(array).all():
                raise ControlVectorError(f"{path}: direction.{block} is not finite")
            writer.add_tensor(f"direction.{block}", np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_control_vector(path: str | os.PathLike) -> ControlVector:
    """Read a control-vector file (xlalign's, repeng's, llama.cpp's cvector-generator's, EasySteer's), refusing
    what llama.cpp would refuse, with the reason."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as error:
        raise ControlVectorError(f"{path}: not a readable GGUF file ({error})") from None
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields.pop("general.architecture", None)
    if arch != ARCH:
        raise ControlVectorError(f"{path}: general.architecture is {arch!r}, not {ARCH!r}: not a control vector")
    directions = {}
    for tensor in reader.tensors:
        match = _NAME.fullmatch(tensor.name)
        if match is None:
            raise ControlVectorError(f"{path}: tensor {tensor.name!r} is not direction.N; llama.cpp refuses the file")
        block = int(match.group(1))
        if block == 0:
            raise ControlVectorError(
                f"{path}: direction.0 (block 0's output) is never steered; llama.cpp refuses the file"
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ControlVectorError(
                f"{path}: {tensor.name} is {tensor.tensor_type.name} with shape "
                f"{tuple(int(n) for n in tensor.shape)}; llama.cpp needs 1-D F32"
            )
        directions[block] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    widths = {tuple(vector.shape) for vector in directions.values()}
    if len(widths) > 1:
        raise ControlVectorError(f"{path}: the directions have different widths {sorted(widths)}")
    if not directions:
        raise ControlVectorError(f"{path}: no direction.N tensors")
    hint = fields.pop(f"{ARCH}.model_hint", None)
    return ControlVector(directions, hint, fields)


def load_metadata(vector: ControlVector, key: str):
    """An ``xlalign.*`` key's JSON value (``None`` when absent)."""
    text = vector.metadata.get(key)
    return None if text is None else json.loads(text) if text[:1] in "[{" else text


def provenance(sources: list[dict], models: list[dict]) -> dict:
    """The ``xlalign.*`` metadata an export writes: version, the convention, each item and the model."""
    return {
        "xlalign.version": __version__,
        "xlalign.convention": CONVENTION,
        "xlalign.sources": sources,
        "xlalign.model": models[0] if models else {},
    }
