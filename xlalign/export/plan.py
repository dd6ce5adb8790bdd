"""From a steering plan (or artifacts) to llama.cpp control-vector directions, refusing what llama.cpp cannot do.

llama.cpp (``src/llama-adapter.cpp``, ``llama_adapter_cvec``; each model graph's ``build_cvec(cur, il)``) adds a
control vector's ``direction.N`` to the output of block ``N`` counted from 0, for every token of every request,
after the block's residual addition and before the next block (after the last block: before the final norm).
xlalign's ``Site(i, "resid")`` is the output of block ``i`` counted from 1 (0: the embeddings), so ``resid.i``
is ``direction.(i-1)``. llama.cpp never steers block 0's output (its loader refuses ``direction.0``) nor the
embeddings, so ``resid.1`` and ``resid.0`` cannot be exported.

Only constant vectors added to the residual stream at every token of every request export: an
:class:`~steer.interventions.AddVector` on ``resid`` (or ``hidden`` below the last layer, the same tensor) with the
default :class:`~steer.schedule.Schedule`. Several are summed per layer (llama.cpp adds the sum, xlalign adds them
one after the other: the same up to float rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from torch import Tensor

from probes.artifacts import Artifact, Eraser, LanguageDetector, LinearMap, NeuronSet, ShiftVector, load_artifact
from steer.convert import to_intervention
from steer.interventions import AddVector, Intervention, InterventionError
from steer.plan import is_single, plan_items
from steer.schedule import Schedule
from probes.errors import XlalignError

# xlalign model_type -> llama.cpp general.architecture (the model hint); others are written as they are.
LLAMA_ARCH = {
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "mixtral": "llama",
    "olmoe": "olmoe",
    "phi3": "phi3",
    "gpt2": "gpt2",
}


class ControlVectorError(XlalignError):
    """A plan, artifact or file that cannot become (or be read as) a llama.cpp control vector."""


@dataclass(frozen=True)
class ControlVector:
    """``directions[N]``: the ``(d,)`` float32 vector llama.cpp adds to the output of block ``N`` (0-based), i.e.
    xlalign's ``resid.N+1``. ``model_hint``: llama.cpp's architecture name of the target model; ``metadata``:
    the file's other keys (provenance)."""

    directions: dict[int, Tensor]
    model_hint: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """The xlalign ``resid`` layers the directions are added at."""
        return [block + 1 for block in sorted(self.directions)]

    def plan(self, scale: float = 1.0) -> list[AddVector]:
        """The same steering as an xlalign plan: one :class:`AddVector` at ``resid.N+1`` per ``direction.N``
        (``scale``: as llama.cpp's ``--control-vector-scaled FILE SCALE``)."""
        return [AddVector({block + 1: vector for block, vector in sorted(self.directions.items())}, scale, "resid")]


def block_of(layer: int, component: str, n_layers: int | None) -> tuple[int | None, str | None]:
    """(llama.cpp block N, None) for an xlalign layer, or (None, why it cannot be exported)."""
    if component == "hidden" and n_layers is None:
        return None, f"hidden.{layer} may be after the final norm: name the model, or steer resid.{layer}"
    if component == "hidden" and n_layers is not None and layer == n_layers:
        return None, (
            f"hidden.{layer} is after the final norm; llama.cpp adds the last block's vector before it "
            f"(steer resid.{layer} instead)"
        )
    if layer == 0:
        return None, "layer 0 is the embeddings, which llama.cpp's control vectors never edit"
    if layer == 1:
        return None, "layer 1 is block 0's output, which llama.cpp never steers (its loader refuses direction.0)"
    if n_layers is not None and layer > n_layers:
        return None, f"layer {layer} does not exist: the model has blocks 1..{n_layers}"
    return layer - 1, None


def _why_not(intervention: object) -> str | None:
    """Why an intervention is not a constant vector added to the residual stream (None: it is one)."""
    name = type(intervention).__name__
    if isinstance(intervention, AddVector):
        if intervention.component not in ("resid", "hidden"):
            return (
                f"it adds to {intervention.component!r}; llama.cpp adds control vectors only to the residual "
                "stream after a whole block (steer 'resid')"
            )
        return None
    reasons = {
        "Ablate": "directional ablation depends on each activation (a projection), not a constant vector",
        "Erase": "LEACE erasure depends on each activation (an affine projection), not a constant vector",
        "ApplyMap": "a linear map of each activation (INCLINE / Procrustes) is not a constant vector",
        "SetNeurons": "it sets MLP neurons, not the residual stream",
        "ZeroNeurons": "it zeroes MLP neurons, not the residual stream",
        "HeadShift": "it edits attention heads before the output projection, not the residual stream",
        "Patch": "it writes recorded per-token values (activation patching, INCLINE): position-dependent",
        "RouterBias": "it edits an MoE router's logits",
        "ForceExperts": "it edits an MoE router's logits",
        "BanExperts": "it edits an MoE router's logits",
    }
    return reasons.get(name, f"a {name} is not a constant vector added to the residual stream")


def _why_not_schedule(schedule: Schedule) -> str | None:
    if schedule.only is not None:
        return (
            f"it is gated on languages {list(schedule.only)}; llama.cpp steers every request whatever its "
            "language (export it without the gate only if every request you send is in one of them)"
        )
    if not isinstance(schedule.prefill, str) or schedule.prefill != "all" or schedule.decode != "all":
        return (
            f"its schedule (prefill={schedule.prefill!r}, decode={schedule.decode!r}) is not every token; "
            "llama.cpp adds a control vector at every prompt token and every decode step"
        )
    return None


def _why_not_artifact(artifact: Artifact) -> str | None:
    if isinstance(artifact, ShiftVector):
        return (
            "a 'head' shift vector edits attention heads, not the residual stream"
            if artifact.component == "head"
            else None
        )
    if isinstance(artifact, LinearMap):
        name = "an INCLINE map" if artifact.method == "incline" else f"a {artifact.method} map"
        return f"{name} transforms each activation linearly (and INCLINE patches the last prompt token only)"
    if isinstance(artifact, Eraser):
        return "a LEACE eraser projects each activation, not a constant vector"
    if isinstance(artifact, NeuronSet):
        return f"a {artifact.method} NeuronSet sets or zeroes MLP neurons, not the residual stream"
    if isinstance(artifact, LanguageDetector):
        return "a language detector gates steering on the detected language; llama.cpp steers every request"
    return f"a {type(artifact).__name__} is not a shift vector"


@dataclass
class Collected:
    """What the items of a plan add up to, where each came from, and every refusal."""

    sums: dict[int, Tensor] = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _describe(intervention: Intervention) -> str:
    layers = ",".join(map(str, getattr(intervention, "layers", ()))) or "?"
    return f"{type(intervention).__name__} at {getattr(intervention, 'component', '?')} layers {layers}"


def _add(found: Collected, where: str, item: object, n_layers: int | None) -> None:
    try:
        ((intervention, schedule),) = plan_items([item])
    except InterventionError as error:
        found.problems.append(f"{where}: {error}")
        return
    where = f"{where} ({_describe(intervention)})"
    why = _why_not(intervention) or _why_not_schedule(schedule)
    if why:
        found.problems.append(f"{where}: {why}")
        return
    for layer, vector in sorted(intervention.vectors.items()):
        block, why = block_of(layer, intervention.component, n_layers)
        if vector.dim() != 1:
            why = f"the vector at layer {layer} has shape {tuple(vector.shape)}, not (d,)"
        if why:
            found.problems.append(f"{where}: {why}")
            continue
        scaled = float(intervention.alpha) * vector.detach().double().cpu()
        found.sums[block] = found.sums[block] + scaled if block in found.sums else scaled
    found.sources.append({"item": where, "alpha": float(intervention.alpha), "layers": list(intervention.layers)})


def collect(
    plan_or_artifacts: object, *, model=None, strength: float | None = None, layers: Sequence[int] | None = None
) -> Collected:
    """Sum every exportable item of a plan, or of artifacts (objects or paths, steered as ``xlalign steer`` does:
    ``strength`` and ``layers``, default the recommended layers), by llama.cpp block; refusals are listed."""
    one = is_single(plan_or_artifacts) or isinstance(plan_or_artifacts, (str, os.PathLike))
    items = [plan_or_artifacts] if one or not isinstance(plan_or_artifacts, Iterable) else list(plan_or_artifacts)
    identity = _identity(model)
    found = Collected(models=[identity] if identity else [])
    n_layers = identity.get("n_layers") if identity else None
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike, Artifact)):
            _add_artifact(found, item, model, strength, layers)
        elif strength is not None or layers is not None:
            found.problems.append(
                f"plan item {index}: strength and layers apply to artifacts; an intervention "
                "carries its own alpha and layers"
            )
        else:
            _add(found, f"plan item {index}", item, n_layers)
    if not found.problems:
        _check_blocks(found)
    return found


def _add_artifact(found: Collected, item, model, strength: float | None, layers: Sequence[int] | None) -> None:
    where = f"artifact {item}" if isinstance(item, (str, os.PathLike)) else f"artifact {item!r:.120}"
    try:
        artifact = load_artifact(Path(item), model=model) if isinstance(item, (str, os.PathLike)) else item
    except (OSError, ValueError) as error:
        found.problems.append(str(error) if str(item) in str(error) else f"{where}: {error}")
        return
    why = _why_not_artifact(artifact)
    if why:
        found.problems.append(f"{where} ({artifact.KIND}): {why}")
        return
    try:
        intervention = to_intervention(artifact, strength=1.0 if strength is None else strength, layers=layers)
    except ValueError as error:
        found.problems.append(f"{where}: {error}")
        return
    found.models.append(dict(artifact.model))
    start = len(found.sources)
    _add(found, where, intervention, artifact.model.get("n_layers"))
    for source in found.sources[start:]:
        source.update(kind=artifact.KIND, method=artifact.method, language=artifact.language, pivot=artifact.pivot)


def _check_blocks(found: Collected) -> None:
    """Every vector as wide as the model; every artifact made on the same kind of model."""
    keys = ("model_type", "n_layers", "hidden_size")
    kinds = {tuple(model.get(key) for key in keys) for model in found.models if model}
    if len(kinds) > 1:
        found.problems.append(
            f"the items were made on different models ({', '.join(map(str, sorted(kinds, key=str)))}); "
            "one control vector steers one model"
        )
    widths = {tuple(vector.shape) for vector in found.sums.values()}
    width = next(iter(kinds))[2] if len(kinds) == 1 else None
    if len(widths) > 1 or (width is not None and widths and widths != {(width,)}):
        found.problems.append(f"the vectors have shapes {sorted(widths)}; the model's residual stream is ({width},)")


def _identity(model) -> dict | None:
    if model is None:
        return None
    from probes.model import model_identity

    return model_identity(model)
