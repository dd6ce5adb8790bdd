"""Interventions: small frozen objects that edit one component's tensor at some layers.

An intervention names its ``component`` and ``layers``, checks at registration that it fits each site
(``check(site, shape)``, with the per-token shape of :func:`probes.model.site_shape`; a mismatch is an
:class:`InterventionError` naming the site and both shapes), and implements ``edit(x, ctx)``: the edited
tensor for every token of ``x`` (``(batch, tokens, *shape)``; ``head`` sites see ``(batch, tokens, heads,
head_dim)``). ``ctx`` (:class:`EditContext`) says which site, and per token its position, decode step, example
and whether the schedule selected it; which tokens keep the edit is the schedule's business
(:mod:`steer.schedule`). Router interventions (:mod:`steer.router`) implement the same protocol on logits.
Every intervention refuses non-finite numbers and tensors when it is made (:func:`finite`): a NaN strength or
vector would otherwise steer to NaN logits and empty continuations without a word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.artifacts import map_formula, nonfinite
from probes.capture import ForwardContext
from probes.model import LINEAR_COMPONENTS, Site
from probes.errors import XlalignError

FLAT_COMPONENTS = ("resid", "hidden", "attn_out", "mlp_out", "mlp_act", "mlp_gate", *LINEAR_COMPONENTS)


class InterventionError(XlalignError):
    """An intervention that does not fit the site it is applied to."""


@dataclass(frozen=True)
class EditContext:
    """What an edit may look at: the site, the forward pass's tokens, which of them the schedule selected, and
    ``original``: the site's tensor before any edit of this plan in this forward pass (what SteerMoE's rule takes
    max and min from; equal to ``x`` for the plan's first edit at the site)."""

    site: Site
    tokens: ForwardContext
    selected: Bool[Tensor, "batch tokens"]
    original: Tensor | None = None

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def position(self) -> Int[Tensor, "batch tokens"]:
        """Index of each token among its example's non-pad tokens (prompt and generated)."""
        return self.tokens.position

    @property
    def decode_step(self) -> Int[Tensor, "batch tokens"]:
        """0 for prompt tokens, s for the s-th generated token."""
        return self.tokens.decode_step

    @property
    def example(self) -> Int[Tensor, " batch"]:
        """Which example each row is (the text's index in xlalign's loops, else the row)."""
        return self.tokens.example

    @property
    def valid(self) -> Bool[Tensor, "batch tokens"]:
        return self.tokens.valid


@runtime_checkable
class Intervention(Protocol):
    component: str

    @property
    def layers(self) -> tuple[int, ...]: ...

    def check(self, site: Site, shape: tuple[int, ...]) -> None: ...

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor: ...


def frozen_tensors(mapping: dict) -> dict[int, Tensor]:
    return {int(layer): torch.as_tensor(value).detach() for layer, value in mapping.items()}


def finite(value: Any, name: str, owner: str, hint: str = "") -> Any:
    """``value`` unchanged if it is finite: a number, a tensor, or a mapping (per layer) or sequence of them; else
    an :class:`InterventionError` naming ``owner``, the parameter ``name`` and the bad value (``hint``: what to do)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            finite(item, f"{name}[{key}]", owner, hint)
        return value
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            finite(item, f"{name}[{index}]", owner, hint)
        return value
    if isinstance(value, Tensor):
        problem = nonfinite(value)
        if problem:
            raise InterventionError(f"{owner}: {name} has {problem}; give finite values{hint}")
        return value
    try:
        number = float(value) if not isinstance(value, (str, bytes)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InterventionError(f"{owner}: {name}={value!r} is not a finite number; give a finite {name}{hint}")
    return value


def expect(site: Site, what: str, got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(got) != tuple(expected):
        raise InterventionError(
            f"{site}: {what} has shape {tuple(got)}, but the site's tensor is {tuple(expected)} per token"
        )


def flat_only(site: Site, name: str) -> None:
    if site.component not in FLAT_COMPONENTS:
        raise InterventionError(f"{site}: {name} edits one vector per token; use it on {', '.join(FLAT_COMPONENTS)}")


def check_units(site: Site, units: Tensor, width: int) -> None:
    if len(units) and (units.min() < 0 or units.max() >= width):
        raise InterventionError(
            f"{site}: neuron indices {units.min().item()}..{units.max().item()} out of range; the site has {width}"
        )


@dataclass(frozen=True)
class AddVector:
    """h <- h + alpha * v[layer] (CAA / ActAdd; shift vectors)."""

    vectors: dict[int, Float[Tensor, "*shape"]]
    alpha: float = 1.0
    component: str = "resid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", finite(frozen_tensors(self.vectors), "vectors", "AddVector"))
        finite(self.alpha, "alpha", "AddVector")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        expect(site, "the vector", tuple(self.vectors[site.layer].shape), shape)

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        return x + self.alpha * self.vectors[ctx.layer].to(x)


@dataclass(frozen=True)
class Ablate:
    """Directional ablation: h <- h - ((h - mean) . u) u for an orthonormal basis u of ``directions[layer]``
    (``(d,)`` or ``(k, d)``); ``means`` (optional, per layer) sets the component along u to the mean's instead
    of to zero (mean ablation)."""

    directions: dict[int, Float[Tensor, "*k d"]]
    component: str = "resid"
    means: dict[int, Float[Tensor, " d"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bases = {}
        for layer, direction in finite(frozen_tensors(self.directions), "directions", "Ablate").items():
            matrix = direction.double().reshape(-1, direction.shape[-1])
            if (matrix.norm(dim=1) == 0).any():
                raise InterventionError(f"Ablate layer {layer}: directions must be finite and non-zero")
            bases[layer] = torch.linalg.qr(matrix.T).Q.T.float()  # (k, d), orthonormal rows
        object.__setattr__(self, "directions", bases)
        object.__setattr__(self, "means", finite(frozen_tensors(self.means), "means", "Ablate"))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.directions))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        flat_only(site, "Ablate")
        expect(site, "a direction", tuple(self.directions[site.layer].shape[1:]), shape)
        if site.layer in self.means:
            expect(site, "the mean", tuple(self.means[site.layer].shape), shape)

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        basis = self.directions[ctx.layer].to(x)
        mean = self.means.get(ctx.layer)
        centred = x if mean is None else x - mean.to(x)
        return x - (centred @ basis.T) @ basis


@dataclass(frozen=True)
class SetNeurons:
    """units[layer] <- values[layer] (finding experts: pivot on_p50 at every position)."""

    units: dict[int, Int[Tensor, " k"]]
    values: dict[int, Float[Tensor, " k"]]
    component: str = "mlp_act"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", {layer: u.long() for layer, u in frozen_tensors(self.units).items()})
        object.__setattr__(self, "values", finite(frozen_tensors(self.values), "values", "SetNeurons"))
        for layer, units in self.units.items():
            if self.values.get(layer) is None or self.values[layer].shape != units.shape:
                raise InterventionError(f"SetNeurons layer {layer}: {tuple(units.shape)} units need as many values")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.units))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        flat_only(site, "SetNeurons")
        check_units(site, self.units[site.layer], shape[0])

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        out = x.clone()
        out[..., self.units[ctx.layer].to(x.device)] = self.values[ctx.layer].to(x)
        return out


@dataclass(frozen=True)
class ZeroNeurons:
    """units[layer] <- 0 (LAPE deactivation; by default on ``mlp_gate``, the activation LAPE counts)."""

    units: dict[int, Int[Tensor, " k"]]
    component: str = "mlp_gate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", {layer: u.long() for layer, u in frozen_tensors(self.units).items()})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.units))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        flat_only(site, "ZeroNeurons")
        check_units(site, self.units[site.layer], shape[0])

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        out = x.clone()
        out[..., self.units[ctx.layer].to(x.device)] = 0
        return out


@dataclass(frozen=True)
class ApplyMap:
    """A fitted linear map m(h) = (h - source_mean) W + target_mean (:func:`probes.artifacts.map_formula`).

    ``rule="code"``: h <- h + sigma * m(h) (INCLINE's released code); ``rule="interpolate"``:
    h <- (1 - sigma) * h + sigma * m(h). The means are zero for INCLINE maps, the centring means for Procrustes.
    """

    maps: dict[int, Float[Tensor, "width width"]]
    sigma: float = 1.0
    rule: str = "interpolate"
    component: str = "resid"
    source_mean: dict[int, Float[Tensor, " width"]] = field(default_factory=dict)
    target_mean: dict[int, Float[Tensor, " width"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in ("code", "interpolate"):
            raise InterventionError(f"ApplyMap rule={self.rule!r}: use 'code' or 'interpolate'")
        finite(self.sigma, "sigma", "ApplyMap")
        for name in ("maps", "source_mean", "target_mean"):
            object.__setattr__(self, name, finite(frozen_tensors(getattr(self, name)), name, "ApplyMap"))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.maps))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        flat_only(site, "ApplyMap")
        expect(site, "W", tuple(self.maps[site.layer].shape), (shape[0], shape[0]))
        for name, means in (("source_mean", self.source_mean), ("target_mean", self.target_mean)):
            if site.layer in means:
                expect(site, name, tuple(means[site.layer].shape), shape)

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        layer = ctx.layer
        mapped = map_formula(x, self.maps[layer], self.source_mean.get(layer), self.target_mean.get(layer))
        if self.rule == "code":
            return x + self.sigma * mapped
        return (1 - self.sigma) * x + self.sigma * mapped


@dataclass(frozen=True)
class Erase:
    """LEACE: x <- x - ((x - bias) proj_right^T) proj_left^T at every token, computed by the ``concept-erasure``
    package's ``LeaceEraser`` (strength 1 erases; ``strength`` s < 1 moves only that far: x - s * correction)."""

    proj_left: dict[int, Float[Tensor, "width k"]]
    proj_right: dict[int, Float[Tensor, "k width"]]
    bias: dict[int, Float[Tensor, " width"]]
    strength: float = 1.0
    component: str = "resid"

    def __post_init__(self) -> None:
        finite(self.strength, "strength", "Erase")
        for name in ("proj_left", "proj_right", "bias"):
            object.__setattr__(self, name, finite(frozen_tensors(getattr(self, name)), name, "Erase"))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.proj_left))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        flat_only(site, "Erase")
        expect(site, "the eraser's bias", tuple(self.bias[site.layer].shape), shape)

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        from concept_erasure import LeaceEraser

        layer = ctx.layer
        eraser = LeaceEraser(self.proj_left[layer].to(x), self.proj_right[layer].to(x), self.bias[layer].to(x))
        return eraser(x) if self.strength == 1 else x + self.strength * (eraser(x) - x)


@dataclass(frozen=True)
class HeadShift:
    """CLAIM: add alpha * vectors[layer][h] to the output of each chosen head h (before the output projection)."""

    heads: dict[int, Int[Tensor, " k"]]
    vectors: dict[int, Float[Tensor, "k head_dim"]]
    alpha: float = 1.0
    component: str = field(default="head", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", {layer: h.long() for layer, h in frozen_tensors(self.heads).items()})
        object.__setattr__(self, "vectors", finite(frozen_tensors(self.vectors), "vectors", "HeadShift"))
        finite(self.alpha, "alpha", "HeadShift")
        for layer, heads in self.heads.items():
            if self.vectors.get(layer) is None or self.vectors[layer].shape[:1] != heads.shape:
                raise InterventionError(f"HeadShift layer {layer}: {len(heads)} heads need as many vectors")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.heads))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        heads, head_dim = shape
        check_units(site, self.heads[site.layer], heads)
        expect(site, "one head's vector", tuple(self.vectors[site.layer].shape[1:]), (head_dim,))

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        out = x.clone()
        out[..., self.heads[ctx.layer].to(x.device), :] += self.alpha * self.vectors[ctx.layer].to(x)
        return out
