"""Export a steering plan as a llama.cpp control vector, and import one as a plan.

    xl.export_control_vector([shift_artifact], "deu.gguf", strength=4.0, layers=[9])   # like xlalign steer
    xl.export_control_vector(plan, "sandwich.gguf", model=model)                      # a plan of AddVectors
    plan = xl.import_control_vector("repeng.gguf", model=model)                        # AddVector at resid.N+1

Then ``llama-cli -m model.gguf --control-vector deu.gguf`` (or ``--control-vector-scaled deu.gguf 0.5``) does
what ``steer(model, plan)`` did. See :mod:`xlalign.export.plan` for the layer mapping and what cannot export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from steer.interventions import AddVector
from xlalign.export.gguf_file import provenance, read_control_vector, write_control_vector
from xlalign.export.plan import LLAMA_ARCH, ControlVector, ControlVectorError, block_of, collect


def build_control_vector(
    plan_or_artifacts, *, model=None, strength: float | None = None, layers: Sequence[int] | None = None
) -> ControlVector:
    """The control vector a plan (interventions, ``(intervention, Schedule)`` pairs) or artifacts (objects or
    paths; ``strength`` and ``layers`` as ``xlalign steer``: default 1 and the recommended layers) amount to.
    Raises :class:`ControlVectorError` listing every item that cannot be expressed and why."""
    found = collect(plan_or_artifacts, model=model, strength=strength, layers=layers)
    if found.problems:
        lines = "\n  ".join(found.problems)
        raise ControlVectorError(f"cannot export as a llama.cpp control vector (nothing was written):\n  {lines}")
    if not found.sums:
        raise ControlVectorError("the plan adds no vector: nothing to export")
    identity = found.models[0] if found.models else {}
    model_type = identity.get("model_type")
    hint = LLAMA_ARCH.get(model_type, model_type) if model_type else None
    directions = {block: vector.float() for block, vector in sorted(found.sums.items())}
    return ControlVector(directions, hint, provenance(found.sources, found.models))


def export_control_vector(
    plan_or_artifacts,
    path: str | os.PathLike,
    *,
    model=None,
    strength: float | None = None,
    layers: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write what ``plan_or_artifacts`` adds as a llama.cpp control-vector GGUF file at ``path`` (see
    :func:`build_control_vector`); ``model`` (optional) checks the layers and widths against it and names it in
    the file. Nothing is written when anything cannot be exported."""
    vector = build_control_vector(plan_or_artifacts, model=model, strength=strength, layers=layers)
    return write_control_vector(vector, path, overwrite=overwrite)


def import_control_vector(path: str | os.PathLike, *, model=None, scale: float = 1.0) -> list[AddVector]:
    """A control-vector file as an xlalign plan: one :class:`AddVector` adding ``direction.N`` at ``resid.N+1``
    (where llama.cpp adds it) times ``scale``. ``model`` (optional): refuse directions its blocks do not have
    (llama.cpp would silently skip them) or of the wrong width."""
    vector = read_control_vector(path)
    if model is not None:
        check_fits(vector, model, where=str(path))
    return vector.plan(scale)


def check_fits(vector: ControlVector, model, *, where: str) -> None:
    """Raise unless every direction is a block ``model`` has (1..L-1, 0-based) with its residual width."""
    from probes.model import model_identity

    identity = model_identity(model)
    width, n_layers = identity["hidden_size"], identity["n_layers"]
    for block, direction in sorted(vector.directions.items()):
        if block_of(block + 1, "resid", n_layers)[1] is not None:
            raise ControlVectorError(
                f"{where}: direction.{block} is past the model's last block ({n_layers - 1}, "
                "0-based); llama.cpp would skip it silently"
            )
        if tuple(direction.shape) != (width,):
            raise ControlVectorError(
                f"{where}: direction.{block} has {direction.numel()} values; the model's residual stream has {width}"
            )
