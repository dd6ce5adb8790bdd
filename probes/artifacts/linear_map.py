"""LinearMap: per-layer matrices mapping one language's activations towards the pivot's (INCLINE, Procrustes),
and the one map formula that applying them uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Float
from torch import Tensor, nn

from probes.artifacts.base import Artifact, ArtifactError, check_site, site_vector_shape
from probes.model.sites import Site

MAP_METHODS = ("incline", "procrustes")
MAP_COMPONENTS = ("resid", "mlp_out")


def map_formula(
    x: Float[Tensor, "*batch d"],
    W: Float[Tensor, "d d"],
    source_mean: Float[Tensor, " d"] | None = None,
    target_mean: Float[Tensor, " d"] | None = None,
) -> Float[Tensor, "*batch d"]:
    """``(x - source_mean) W + target_mean`` (the means default to zero: an INCLINE map is ``x W``)."""
    centred = x if source_mean is None else x - source_mean.to(x)
    mapped = centred @ W.to(x)
    return mapped if target_mean is None else mapped + target_mean.to(x)


@dataclass(frozen=True, eq=False)
class LinearMap(Artifact):
    """Per-layer matrices ``W`` (d, d) mapping ``language`` activations at ``component`` towards ``pivot``.

    ``method`` is ``incline`` (least squares, ``params['ridge']``) or ``procrustes`` (orthogonal; ``params``
    says ``center``/``normalize``, and ``mean_source`` / ``mean_pivot`` hold the centring means per layer).
    ``model`` is the :func:`probes.model.model_identity` of the model the map was fitted on;
    ``recommended_layers`` where to apply it when no layers are named.
    """

    matrices: dict[int, Tensor]
    component: str
    method: str
    language: str
    pivot: str
    params: dict
    model: dict
    mean_source: dict[int, Tensor] = field(default_factory=dict)
    mean_pivot: dict[int, Tensor] = field(default_factory=dict)
    recommended_layers: tuple[int, ...] = field(default=())

    KIND = "LinearMap"

    def __post_init__(self) -> None:
        if self.component not in MAP_COMPONENTS:
            raise ArtifactError(f"a LinearMap acts on {' or '.join(MAP_COMPONENTS)}, not {self.component!r}")
        if self.method not in MAP_METHODS:
            raise ArtifactError(f"unknown map method {self.method!r}; choose one of {', '.join(MAP_METHODS)}")
        if not self.matrices:
            raise ArtifactError("a LinearMap needs at least one layer")
        for layer, W in self.matrices.items():
            if W.dim() != 2 or W.shape[0] != W.shape[1]:
                raise ArtifactError(f"layer {layer}: W must be square (d, d); got {tuple(W.shape)}")
        if self.method == "procrustes" and not set(self.matrices) == set(self.mean_source) == set(self.mean_pivot):
            raise ArtifactError("a procrustes LinearMap needs mean_source and mean_pivot for every layer of matrices")
        outside = sorted(set(self.recommended_layers) - set(self.matrices))
        if outside:
            raise ArtifactError(f"recommended layers {outside} have no matrix; layers: {sorted(self.matrices)}")
        object.__setattr__(self, "recommended_layers", tuple(self.recommended_layers))

    @property
    def layers(self) -> list[int]:
        return sorted(self.matrices)

    def __repr__(self) -> str:
        return (
            f"LinearMap(method={self.method!r}, {self.language} -> {self.pivot}, component={self.component!r}, "
            f"layers={self.layers}, recommended_layers={list(self.recommended_layers)}, model={self.model.get('name')!r})"
        )

    def transform(self, layer: int, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        """The map at ``layer``: ``x W`` (incline) or ``(x - mean_source) W + mean_pivot`` (procrustes)."""
        return map_formula(x, self.matrices[layer], self.mean_source.get(layer), self.mean_pivot.get(layer))

    def tensors(self) -> dict[str, Tensor]:
        tensors = {f"W.{layer}": W for layer, W in self.matrices.items()}
        tensors |= {f"mean_source.{layer}": m for layer, m in self.mean_source.items()}
        tensors |= {f"mean_pivot.{layer}": m for layer, m in self.mean_pivot.items()}
        return tensors

    def metadata(self) -> dict:
        return {
            "component": self.component,
            "method": self.method,
            "language": self.language,
            "pivot": self.pivot,
            "params": self.params,
            "layers": self.layers,
            "recommended_layers": list(self.recommended_layers),
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict, where: str) -> LinearMap:
        layers = meta["layers"]
        means = [
            {layer: tensors[f"{name}.{layer}"] for layer in layers} if meta["method"] == "procrustes" else {}
            for name in ("mean_source", "mean_pivot")
        ]
        return cls(
            {layer: tensors[f"W.{layer}"] for layer in layers},
            meta["component"],
            meta["method"],
            meta["language"],
            meta["pivot"],
            meta["params"],
            meta["model"],
            *means,
            tuple(meta["recommended_layers"]),
        )

    def check_fits(self, model: nn.Module, *, where: str) -> None:
        for layer, W in self.matrices.items():
            site = Site(layer, self.component)
            (d,) = site_vector_shape(model, site)
            check_site(model, site, W, (d, d), what="W", where=where)
            for name, means in (("mean_source", self.mean_source), ("mean_pivot", self.mean_pivot)):
                if means:
                    check_site(model, site, means[layer], (d,), what=name, where=where)
