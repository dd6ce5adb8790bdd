"""LanguageDetector: a linear language-ID probe on one layer's pooled activations, runnable inside a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.artifacts.base import Artifact, ArtifactError, check_site, site_vector_shape
from probes.model.sites import Site


@dataclass(frozen=True, eq=False)
class LanguageDetector(Artifact):
    """Which of ``languages`` a text is in, from its ``pooling``-pooled activations at ``Site(layer, component)``:
    ``argmax(((x - mean) / scale) @ weight.T + bias)`` (a standardised multinomial logistic regression, the
    form of :func:`probes.analysis.langid.probe_pipeline`). ``weight`` is ``(k, d)``, the rest ``(k,)`` / ``(d,)``.
    """

    layer: int
    component: str
    pooling: str
    languages: tuple[str, ...]
    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor
    params: dict
    model: dict

    KIND = "LanguageDetector"

    def __post_init__(self) -> None:
        k, d = self.weight.shape
        if len(self.languages) != k or tuple(self.bias.shape) != (k,):
            raise ArtifactError(
                f"a detector of {len(self.languages)} languages needs weight (k, d) and bias (k,) "
                f"with k = {len(self.languages)}; got {tuple(self.weight.shape)}, {tuple(self.bias.shape)}"
            )
        if tuple(self.mean.shape) != (d,) or tuple(self.scale.shape) != (d,):
            raise ArtifactError(
                f"mean and scale must be ({d},); got {tuple(self.mean.shape)}, {tuple(self.scale.shape)}"
            )
        object.__setattr__(self, "languages", tuple(self.languages))

    @property
    def site(self) -> Site:
        return Site(self.layer, self.component)

    def __repr__(self) -> str:
        return (
            f"LanguageDetector({self.site}, pooling={self.pooling!r}, languages={list(self.languages)}, "
            f"model={self.model.get('name')!r})"
        )

    def logits(self, pooled: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
        parts = [t.to(pooled.device, torch.float32) for t in (self.mean, self.scale, self.weight, self.bias)]
        mean, scale, weight, bias = parts
        return ((pooled.float() - mean) / scale) @ weight.T + bias

    def predict(self, pooled: Float[Tensor, "n d"]) -> list[str]:
        """The language of each pooled row."""
        return [self.languages[i] for i in self.logits(pooled).argmax(dim=-1).tolist()]

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}

    def metadata(self) -> dict:
        return {
            "layer": self.layer,
            "component": self.component,
            "pooling": self.pooling,
            "languages": list(self.languages),
            "params": self.params,
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict, where: str) -> LanguageDetector:
        return cls(
            meta["layer"],
            meta["component"],
            meta["pooling"],
            tuple(meta["languages"]),
            tensors["mean"],
            tensors["scale"],
            tensors["weight"],
            tensors["bias"],
            meta["params"],
            meta["model"],
        )

    def check_fits(self, model: nn.Module, *, where: str) -> None:
        check_site(model, self.site, self.mean, site_vector_shape(model, self.site), what="mean", where=where)

    @property
    def layers(self) -> list[int]:
        return [self.layer]
