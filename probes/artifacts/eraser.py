"""Eraser: per-layer LEACE erasers that remove the linear information about which language a text is in."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from probes.artifacts.base import Artifact, ArtifactError, check_site, site_vector_shape
from probes.model.sites import Site

ERASER_COMPONENTS = ("resid", "hidden")


@dataclass(frozen=True, eq=False)
class Eraser(Artifact):
    """LEACE (Belrose et al. 2023, the ``concept-erasure`` package) at ``component`` per layer:
    ``x - ((x - bias) @ proj_right.T) @ proj_left.T``, i.e. ``concept_erasure.LeaceEraser(proj_left, proj_right,
    bias)``, fitted with the one-hot ``languages`` as the concept. ``proj_left`` is ``(d, k)``, ``proj_right``
    ``(k, d)``, ``bias`` ``(d,)``; ``params`` records how it was fitted (pooling, sentences per language)."""

    proj_left: dict[int, Tensor]
    proj_right: dict[int, Tensor]
    bias: dict[int, Tensor]
    component: str
    languages: tuple[str, ...]
    params: dict
    model: dict
    recommended_layers: tuple[int, ...] = field(default=())

    KIND = "Eraser"

    def __post_init__(self) -> None:
        if self.component not in ERASER_COMPONENTS:
            raise ArtifactError(f"an Eraser acts on {' or '.join(ERASER_COMPONENTS)}, not {self.component!r}")
        if not self.proj_left or set(self.proj_left) != set(self.proj_right) or set(self.proj_left) != set(self.bias):
            raise ArtifactError("an Eraser needs proj_left, proj_right and bias for the same, non-empty layers")
        for layer in self.proj_left:
            (d, k), right, bias = self.proj_left[layer].shape, self.proj_right[layer].shape, self.bias[layer].shape
            if tuple(right) != (k, d) or tuple(bias) != (d,):
                raise ArtifactError(
                    f"layer {layer}: proj_left {(d, k)} needs proj_right {(k, d)} and bias {(d,)}; "
                    f"got {tuple(right)} and {tuple(bias)}"
                )
        object.__setattr__(self, "languages", tuple(self.languages))
        object.__setattr__(self, "recommended_layers", tuple(self.recommended_layers))

    @property
    def layers(self) -> list[int]:
        return sorted(self.proj_left)

    def __repr__(self) -> str:
        return (
            f"Eraser(component={self.component!r}, layers={self.layers}, languages={list(self.languages)}, "
            f"model={self.model.get('name')!r})"
        )

    def tensors(self) -> dict[str, Tensor]:
        return {f"{name}.{layer}": part[layer] for name, part in self._parts().items() for layer in self.layers}

    def _parts(self) -> dict[str, dict[int, Tensor]]:
        return {"proj_left": self.proj_left, "proj_right": self.proj_right, "bias": self.bias}

    def metadata(self) -> dict:
        return {
            "component": self.component,
            "languages": list(self.languages),
            "params": self.params,
            "layers": self.layers,
            "recommended_layers": list(self.recommended_layers),
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict, where: str) -> Eraser:
        parts = [
            {layer: tensors[f"{name}.{layer}"] for layer in meta["layers"]}
            for name in ("proj_left", "proj_right", "bias")
        ]
        return cls(
            *parts,
            meta["component"],
            tuple(meta["languages"]),
            meta["params"],
            meta["model"],
            tuple(meta["recommended_layers"]),
        )

    def check_fits(self, model: nn.Module, *, where: str) -> None:
        for layer in self.layers:
            site = Site(layer, self.component)
            (d,) = site_vector_shape(model, site)
            check_site(model, site, self.bias[layer], (d,), what="bias", where=where)
