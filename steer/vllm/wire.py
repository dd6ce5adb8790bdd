"""A plan as bytes for vLLM's workers: JSON for its structure, safetensors for its tensors, never pickled code.

Only the interventions of :data:`WIRED` travel (their fields are per-layer tensor maps, numbers and strings); a
plan item of another type, or a schedule that cannot mean the same thing per request (a prefill token mask, which
is laid out like a padded batch), is an :class:`EngineError` before anything is sent. Decoding rebuilds each
intervention field by field without running its ``__post_init__`` again: the values were validated (and, for
``Ablate``, orthonormalised) where the plan was made, and arrive bit for bit.
"""

from __future__ import annotations

import hashlib
import json

from typing import NamedTuple

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from probes.artifacts import LanguageDetector
from steer.errors import EngineError
from steer.interventions import AddVector, Ablate, ApplyMap, Erase, HeadShift, Intervention, SetNeurons, ZeroNeurons
from steer.patch import Patch
from steer.router import BanExperts, ForceExperts, RouterBias
from steer.schedule import Schedule

WIRED: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        AddVector,
        Ablate,
        SetNeurons,
        ZeroNeurons,
        ApplyMap,
        Erase,
        HeadShift,
        RouterBias,
        ForceExperts,
        BanExperts,
        Patch,
    )
}
# Fields not sent: a Patch's per-example lists, which its padded tensors and lengths (sent) hold as well.
_DERIVED = {"Patch": ("values",)}
_SEPARATOR = b"\n"


class Decoded(NamedTuple):
    """A plan as the workers receive it: its items and the detector that gates it (None: given languages)."""

    items: list[tuple[Intervention, Schedule]]
    detector: LanguageDetector | None


def encode_plan(items: list[tuple[Intervention, Schedule]], detector: LanguageDetector | None = None) -> bytes:
    """``items`` (gated by ``detector`` when given) as one byte string: a JSON header line, then a safetensors blob
    of every tensor."""
    header, tensors = [], {}
    for index, (intervention, schedule) in enumerate(items):
        name = type(intervention).__name__
        if WIRED.get(name) is not type(intervention):
            raise EngineError(
                f"plan item {index}: {name} cannot run inside vLLM; supported there: {', '.join(WIRED)} "
                "(use backend='hf' for the others)"
            )
        fields, maps = {}, {}
        for field_name, value in vars(intervention).items():
            if field_name in _DERIVED.get(name, ()):
                continue
            if isinstance(value, dict):
                maps[field_name] = sorted(value)
                for layer, tensor in value.items():
                    tensors[f"{index}.{field_name}.{layer}"] = tensor.detach().cpu().contiguous()
            else:
                fields[field_name] = value
        header.append({"type": name, "fields": fields, "maps": maps, "schedule": _schedule_fields(schedule, index)})
    gate = None
    if detector is not None:
        gate = {**detector.metadata(), "model": detector.model}
        tensors |= {f"detector.{key}": value.detach().cpu().contiguous() for key, value in detector.tensors().items()}
    document = {"items": header, "detector": gate}
    return json.dumps(document).encode() + _SEPARATOR + save_tensors(tensors)


def decode_plan(payload: bytes) -> Decoded:
    """The (intervention, schedule) items and the detector :func:`encode_plan` wrote."""
    head, _, blob = payload.partition(_SEPARATOR)
    tensors = load_tensors(blob) if blob else {}
    document = json.loads(head)
    items = []
    for index, entry in enumerate(document["items"]):
        cls = WIRED[entry["type"]]
        intervention = object.__new__(cls)
        for name, value in entry["fields"].items():
            object.__setattr__(intervention, name, value)
        for name, layers in entry["maps"].items():
            object.__setattr__(intervention, name, {layer: tensors[f"{index}.{name}.{layer}"] for layer in layers})
        for name in _DERIVED.get(entry["type"], ()):
            object.__setattr__(intervention, name, {})
        schedule = entry["schedule"]
        items.append((intervention, Schedule(**{key: _tuple(value) for key, value in schedule.items()})))
    gate = document["detector"]
    if gate is None:
        return Decoded(items, None)
    parts = {key.removeprefix("detector."): value for key, value in tensors.items() if key.startswith("detector.")}
    return Decoded(items, LanguageDetector.from_parts(parts, gate, "the plan's detector"))


def _schedule_fields(schedule: Schedule, index: int) -> dict:
    if isinstance(schedule.prefill, Tensor):
        raise EngineError(
            f"plan item {index}: a prefill token mask is laid out like one padded batch; inside vLLM each request "
            "is scheduled alone: use prefill='all', 'last', 'none' or a (start, stop) span"
        )
    return {"prefill": schedule.prefill, "decode": schedule.decode, "only": schedule.only}


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def plan_digest(payload: bytes) -> str:
    """A short content hash of an encoded plan (part of a steered request's prefix-cache salt)."""
    return hashlib.sha256(payload).hexdigest()[:16]
