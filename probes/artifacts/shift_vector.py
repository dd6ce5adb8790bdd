"""ShiftVector: per-layer vectors that move one language's activations towards the pivot's."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from probes.artifacts.base import Artifact, ArtifactError, check_site, site_vector_shape
from probes.model.sites import COMPONENTS, Site


@dataclass(frozen=True, eq=False)
class ShiftVector(Artifact):
    """Per-layer vectors that move ``language`` towards ``pivot`` at ``component`` (add ``alpha * v``).

    ``vectors[layer]`` has shape ``(d,)``, or ``(heads, head_dim)`` for ``head``. ``model`` is the
    :func:`probes.model.model_identity` of the model the vectors were found on. ``recommended_layers``: where
    to apply it when no layers are named (``xlalign steer`` uses them).
    """

    vectors: dict[int, Tensor]
    component: str
    pivot: str
    language: str
    method: str
    params: dict
    model: dict
    recommended_layers: tuple[int, ...] = field(default=())

    KIND = "ShiftVector"

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ArtifactError(f"unknown component {self.component!r}; choose one of {', '.join(COMPONENTS)}")
        if not self.vectors:
            raise ArtifactError("a ShiftVector needs at least one layer")
        shapes = {layer: tuple(v.shape) for layer, v in self.vectors.items()}
        if len(set(shapes.values())) > 1:
            raise ArtifactError(f"all layers' vectors must have one shape; got {shapes}")
        if self.component == "head" and len(next(iter(shapes.values()))) != 2:
            raise ArtifactError(f"head vectors have shape (heads, head_dim); got {shapes}")
        outside = sorted(set(self.recommended_layers) - set(self.vectors))
        if outside:
            raise ArtifactError(f"recommended layers {outside} have no vector; layers: {sorted(self.vectors)}")
        object.__setattr__(self, "recommended_layers", tuple(self.recommended_layers))

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.vectors.values())).shape)
        return (
            f"ShiftVector(method={self.method!r}, {self.language} -> {self.pivot}, component={self.component!r}, "
            f"layers={self.layers}, shape={shape}, recommended_layers={list(self.recommended_layers)}, "
            f"model={self.model.get('name')!r})"
        )

    def tensors(self) -> dict[str, Tensor]:
        return {str(Site(layer, self.component)): v for layer, v in self.vectors.items()}

    def metadata(self) -> dict:
        return {
            "component": self.component,
            "pivot": self.pivot,
            "language": self.language,
            "method": self.method,
            "params": self.params,
            "layers": self.layers,
            "recommended_layers": list(self.recommended_layers),
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict, where: str) -> ShiftVector:
        vectors = {layer: tensors[str(Site(layer, meta["component"]))] for layer in meta["layers"]}
        return cls(
            vectors,
            meta["component"],
            meta["pivot"],
            meta["language"],
            meta["method"],
            meta["params"],
            meta["model"],
            tuple(meta["recommended_layers"]),
        )

    def check_fits(self, model: nn.Module, *, where: str) -> None:
        for layer, vector in self.vectors.items():
            site = Site(layer, self.component)
            check_site(model, site, vector, site_vector_shape(model, site), what="vector", where=where)
