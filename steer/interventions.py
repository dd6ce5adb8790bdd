"""Interventions: small frozen objects that edit one component's tensor at some layers.

An intervention names its ``component`` and ``layers`` and implements ``edit(layer, x)``, returning the
edited tensor for every token of ``x`` (``(batch, tokens, width)``; ``head`` sites see
``(batch, tokens, heads, head_dim)``). Which tokens keep the edit is the schedule's business
(:mod:`steer.schedule`), so an intervention never sees padding or decode steps. An MoE router
intervention implements the same protocol on the ``router`` component.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from probes.directions import LinearMap as FittedMap
    from probes.directions import ShiftVector
    from probes.neurons import NeuronSet


@runtime_checkable
class Intervention(Protocol):
    component: str

    @property
    def layers(self) -> tuple[int, ...]: ...

    def edit(self, layer: int, x: Tensor) -> Tensor: ...


def _frozen_tensors(mapping: dict) -> dict[int, Tensor]:
    return {int(layer): torch.as_tensor(value).detach() for layer, value in mapping.items()}


@dataclass(frozen=True)
class AddVector:
    """h <- h + alpha * v[layer] (CAA / ActAdd; shift vectors)."""

    vectors: dict[int, Float[Tensor, " width"]]
    alpha: float = 1.0
    component: str = "resid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", _frozen_tensors(self.vectors))

    @classmethod
    def from_shift(cls, shift: ShiftVector, alpha: float = 1.0) -> AddVector:
        """Add a fitted shift vector (it points from its language towards the pivot)."""
        return cls(shift.vectors, alpha, shift.component)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    def edit(self, layer: int, x: Tensor) -> Tensor:
        return x + self.alpha * self.vectors[layer].to(x)


@dataclass(frozen=True)
class SetNeurons:
    """units[layer] <- values[layer] (finding experts: pivot on_p50 at every position)."""

    units: dict[int, Int[Tensor, " k"]]
    values: dict[int, Float[Tensor, " k"]]
    component: str = "mlp_act"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", _frozen_tensors(self.units))
        object.__setattr__(self, "values", _frozen_tensors(self.values))
        for layer, units in self.units.items():
            if self.values.get(layer) is None or self.values[layer].shape != units.shape:
                raise ValueError(f"SetNeurons layer {layer}: {tuple(units.shape)} units need as many values")

    @classmethod
    def from_neurons(cls, neurons: NeuronSet, language: str, value: str = "on_p50") -> SetNeurons:
        """Set ``language``'s units (e.g. the pivot's AP experts) to their stored ``value`` at every position."""
        rows, values = neurons.neurons[language], neurons.values[language][value]
        layers = torch.unique(rows[:, 0]).tolist()
        units = {layer: rows[rows[:, 0] == layer, 1] for layer in layers}
        return cls(units, {layer: values[rows[:, 0] == layer].float() for layer in layers}, neurons.component)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.units))

    def edit(self, layer: int, x: Tensor) -> Tensor:
        out = x.clone()
        out[..., self.units[layer].to(x.device)] = self.values[layer].to(x)
        return out


@dataclass(frozen=True)
class ZeroNeurons:
    """units[layer] <- 0 (LAPE deactivation; by default on ``mlp_gate``, the activation LAPE counts)."""

    units: dict[int, Int[Tensor, " k"]]
    component: str = "mlp_gate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", _frozen_tensors(self.units))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.units))

    def edit(self, layer: int, x: Tensor) -> Tensor:
        out = x.clone()
        out[..., self.units[layer].to(x.device)] = 0
        return out


@dataclass(frozen=True)
class LinearMap:
    """INCLINE: ``mode="code"`` h <- h + sigma * m(h) (the released code's rule);
    ``mode="interpolate"`` h <- (1 - sigma) * h + sigma * m(h), with m(h) = (h - source_mean) W + target_mean
    (the means are zero for INCLINE maps and the centring means for Procrustes maps).

    ``interpolate`` is the default: on held-out NTREX with Gemma 3 270M it raised MEXA where ``code``
    lowered it for every language (results/steering_ntrex.md)."""

    maps: dict[int, Float[Tensor, "width width"]]
    sigma: float = 1.0
    mode: str = "interpolate"
    component: str = "resid"
    source_mean: dict[int, Float[Tensor, " width"]] = field(default_factory=dict)
    target_mean: dict[int, Float[Tensor, " width"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("code", "interpolate"):
            raise ValueError(f"LinearMap mode={self.mode!r}: use 'code' or 'interpolate'")
        for name in ("maps", "source_mean", "target_mean"):
            object.__setattr__(self, name, _frozen_tensors(getattr(self, name)))

    @classmethod
    def from_map(cls, fitted: FittedMap, sigma: float = 1.0, mode: str = "interpolate") -> LinearMap:
        """Apply a fitted INCLINE or Procrustes map (:class:`probes.directions.LinearMap`)."""
        return cls(fitted.matrices, sigma, mode, fitted.component, fitted.mean_source, fitted.mean_pivot)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.maps))

    def edit(self, layer: int, x: Tensor) -> Tensor:
        source = self.source_mean.get(layer)
        target = self.target_mean.get(layer)
        mapped = (x if source is None else x - source.to(x)) @ self.maps[layer].to(x)
        if target is not None:
            mapped = mapped + target.to(x)
        if self.mode == "code":
            return x + self.sigma * mapped
        return (1 - self.sigma) * x + self.sigma * mapped


@dataclass(frozen=True)
class HeadShift:
    """CLAIM: add alpha * vectors[layer][h] to the output of each chosen head h (before o_proj)."""

    heads: dict[int, Int[Tensor, " k"]]
    vectors: dict[int, Float[Tensor, "k head_dim"]]
    alpha: float = 1.0
    component: str = field(default="head", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _frozen_tensors(self.heads))
        object.__setattr__(self, "vectors", _frozen_tensors(self.vectors))

    @classmethod
    def from_shift(cls, shift: ShiftVector, alpha: float = 1.0) -> HeadShift:
        """Shift the heads whose vectors are non-zero in a ``head`` shift vector (e.g. a CLAIM top-k)."""
        if shift.component != "head":
            raise ValueError(f"HeadShift needs a 'head' shift vector, not a {shift.component!r} one")
        heads = {layer: v.abs().sum(-1).nonzero().flatten() for layer, v in shift.vectors.items()}
        heads = {layer: h for layer, h in heads.items() if len(h)}
        return cls(heads, {layer: shift.vectors[layer][h] for layer, h in heads.items()}, alpha)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.heads))

    def edit(self, layer: int, x: Tensor) -> Tensor:
        out = x.clone()
        out[..., self.heads[layer].to(x.device), :] += self.alpha * self.vectors[layer].to(x)
        return out
