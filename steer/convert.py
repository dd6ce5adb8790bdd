"""From artifacts to interventions: what the probes found, ready to steer with.

``to_intervention(artifact, strength=..., language=..., layers=...)`` picks the intervention a kind of artifact
calls for; ``layers`` defaults to the artifact's recommended layers (every layer when it recommends none).
"""

from __future__ import annotations

from typing import Sequence

from probes.artifacts import Artifact, Eraser, LinearMap, NeuronSet, ShiftVector
from steer.interventions import (
    AddVector,
    ApplyMap,
    Erase,
    HeadShift,
    Intervention,
    InterventionError,
    SetNeurons,
    ZeroNeurons,
    finite,
)


def default_layers(artifact: ShiftVector | LinearMap | Eraser, layers: Sequence[int] | None = None) -> list[int]:
    """``layers`` (checked against the artifact), else its recommended layers, else all of them."""
    if layers is None:
        return list(artifact.recommended_layers or artifact.layers)
    missing = sorted(set(layers) - set(artifact.layers))
    if missing:
        raise InterventionError(f"{artifact.KIND} has no layers {missing}; it has {artifact.layers}")
    return sorted(set(layers))


def add_vector(shift: ShiftVector, alpha: float = 1.0, layers: Sequence[int] | None = None) -> AddVector:
    """Add a fitted shift vector (it points from its language towards the pivot)."""
    return AddVector({layer: shift.vectors[layer] for layer in default_layers(shift, layers)}, alpha, shift.component)


def head_shift(shift: ShiftVector, alpha: float = 1.0, layers: Sequence[int] | None = None) -> HeadShift:
    """Shift the heads whose vectors are non-zero in a ``head`` shift vector (e.g. a CLAIM top-k)."""
    if shift.component != "head":
        raise InterventionError(f"HeadShift needs a 'head' shift vector, not a {shift.component!r} one")
    heads = {layer: shift.vectors[layer].abs().sum(-1).nonzero().flatten() for layer in default_layers(shift, layers)}
    heads = {layer: h for layer, h in heads.items() if len(h)}
    return HeadShift(heads, {layer: shift.vectors[layer][h] for layer, h in heads.items()}, alpha)


def apply_map(
    fitted: LinearMap, sigma: float = 1.0, rule: str = "interpolate", layers: Sequence[int] | None = None
) -> ApplyMap:
    """Apply a fitted INCLINE or Procrustes map at ``layers``."""
    chosen = default_layers(fitted, layers)
    return ApplyMap(
        {layer: fitted.matrices[layer] for layer in chosen},
        sigma,
        rule,
        fitted.component,
        {layer: fitted.mean_source[layer] for layer in chosen if layer in fitted.mean_source},
        {layer: fitted.mean_pivot[layer] for layer in chosen if layer in fitted.mean_pivot},
    )


def set_neurons(neurons: NeuronSet, language: str, value: str = "on_p50") -> SetNeurons:
    """Set ``language``'s units (e.g. the pivot's AP experts) to their stored ``value`` at every position."""
    units = neurons.units(language)
    values = neurons.values[language].get(value)
    if values is None:
        raise InterventionError(
            f"the NeuronSet holds no {value!r} values for {language!r}; it has "
            f"{', '.join(neurons.values[language]) or 'none'}"
        )
    rows = neurons.neurons[language]
    return SetNeurons(units, {layer: values[rows[:, 0] == layer].float() for layer in units}, neurons.component)


def zero_neurons(neurons: NeuronSet, language: str) -> ZeroNeurons:
    """Zero ``language``'s units (LAPE deactivation)."""
    return ZeroNeurons(neurons.units(language), neurons.component)


def erase(eraser: Eraser, strength: float = 1.0, layers: Sequence[int] | None = None) -> Erase:
    """Erase the language at ``layers`` with a fitted LEACE eraser."""
    chosen = default_layers(eraser, layers)
    return Erase(
        *({layer: part[layer] for layer in chosen} for part in (eraser.proj_left, eraser.proj_right, eraser.bias)),
        strength,
        eraser.component,
    )


def to_intervention(
    artifact: Artifact, *, strength: float = 1.0, language: str | None = None, layers: Sequence[int] | None = None
) -> Intervention:
    """The intervention an artifact calls for: a shift vector adds (``head``: shifts heads) with ``alpha =
    strength``, a map interpolates with ``sigma = strength``, LAPE neurons of ``language`` are zeroed, other
    neuron sets (AP experts) set to their median response, an eraser erases (``strength`` 1: fully). A
    non-finite ``strength`` is an :class:`InterventionError`, whatever the kind."""
    finite(strength, "strength", "to_intervention", " (xlalign steer: --strength)")
    if isinstance(artifact, ShiftVector):
        make = head_shift if artifact.component == "head" else add_vector
        return make(artifact, strength, layers)
    if isinstance(artifact, LinearMap):
        return apply_map(artifact, strength, layers=layers)
    if isinstance(artifact, Eraser):
        return erase(artifact, strength, layers)
    if isinstance(artifact, NeuronSet):
        if language not in artifact.languages:
            raise InterventionError(f"name a language: the NeuronSet has units for {', '.join(artifact.languages)}")
        return zero_neurons(artifact, language) if artifact.method == "LAPE" else set_neurons(artifact, language)
    raise InterventionError(f"no intervention for a {type(artifact).__name__}")
