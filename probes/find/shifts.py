"""Shift vectors (docs/methods.md): per layer, a vector that moves
language-l activations towards the pivot's, by one of three strategies following steering-vectors'
``aggregators.py`` (``mean_aggregator``, ``pca_aggregator``, ``logistic_aggregator``)::

    shift = fit_shift(acts, "deu", pivot="eng", method="mean")      # a ShiftVector artifact, every resid layer
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from probes.analysis.activations import Activations
from probes.artifacts.shift_vector import ShiftVector
from probes.find.errors import FinderError


def mean_shift(pivot: Float[Tensor, "n d"], other: Float[Tensor, "m d"]) -> Float[Tensor, " d"]:
    """Pivot mean minus language mean (steering-vectors ``mean_aggregator`` on unpaired rows)."""
    return (pivot.double().mean(0) - other.double().mean(0)).to(pivot.dtype)


def pca_shift(pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    """First principal direction of the paired differences ``pivot_i - other_i``, uncentred.

    As steering-vectors' ``pca_aggregator`` (PCA of the differences and their negatives, i.e. the top right
    singular vector of the difference matrix), sign-flipped to agree with the mean difference. Unlike
    steering-vectors (unit norm), the result is scaled to the mean difference's projection on it, so it has
    the same units as :func:`mean_shift` and adding it moves the l-mean as far along that direction.
    """
    if pivot.shape != other.shape:
        raise FinderError(f"pca shift needs paired rows: pivot {tuple(pivot.shape)}, other {tuple(other.shape)}")
    differences = (pivot.double() - other.double()).numpy()
    direction = np.linalg.svd(differences, full_matrices=False)[2][0]
    return _scaled(direction, differences.mean(0), pivot.dtype)


def logistic_shift(
    pivot: Float[Tensor, "n d"], other: Float[Tensor, "m d"], C: float = 1.0, max_iter: int = 1000
) -> Float[Tensor, " d"]:
    """The normalised coefficient of a logistic regression separating pivot (1) from language l (0).

    As steering-vectors' ``logistic_aggregator``, but with an intercept (activations are not centred) and
    fitted on features shifted by their common mean and divided by one global standard deviation: an
    isotropic rescaling, so the coefficient is still a direction in activation space (per-feature
    standardisation would distort it). Scaled like :func:`pca_shift`: to the mean difference's projection.
    """
    features = torch.cat([pivot, other]).double().numpy()
    features = (features - features.mean(0)) / features.std()
    labels = np.r_[np.ones(len(pivot)), np.zeros(len(other))]
    coef = LogisticRegression(C=C, max_iter=max_iter).fit(features, labels).coef_[0]
    mean_difference = pivot.double().mean(0).numpy() - other.double().mean(0).numpy()
    return _scaled(coef / np.linalg.norm(coef), mean_difference, pivot.dtype)


def _scaled(unit: np.ndarray, mean_difference: np.ndarray, dtype: torch.dtype) -> Tensor:
    """``unit`` times the projection of the mean difference on it (so the sign follows the mean difference)."""
    return torch.from_numpy(unit * (mean_difference @ unit)).to(dtype)


SHIFT_METHODS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": mean_shift,
    "pca": pca_shift,
    "logistic": logistic_shift,
}


def shift(
    pivot: Float[Tensor, "n *dims"], other: Float[Tensor, "m *dims"], method: str = "mean", **params
) -> Float[Tensor, "*dims"]:
    """One site's shift vector; ``(n, heads, head_dim)`` input (``head`` sites) gets one vector per head.

    ``params`` go to the strategy (``C``, ``max_iter`` for ``logistic``).
    """
    if method not in SHIFT_METHODS:
        raise FinderError(f"unknown shift method {method!r}; choose one of {', '.join(SHIFT_METHODS)}")
    if pivot.shape[1:] != other.shape[1:]:
        raise FinderError(f"pivot vectors have shape {tuple(pivot.shape[1:])}, the other's {tuple(other.shape[1:])}")
    fn = SHIFT_METHODS[method]
    if pivot.dim() == 3:
        return torch.stack([fn(pivot[:, h], other[:, h], **params) for h in range(pivot.shape[1])])
    return fn(pivot, other, **params)


def fit_shift_vectors(
    pivot: Mapping[int, Float[Tensor, "n *dims"]],
    other: Mapping[int, Float[Tensor, "m *dims"]],
    method: str = "mean",
    **params,
) -> dict[int, Float[Tensor, "*dims"]]:
    """:func:`shift` for every layer; both dicts must hold the same layers."""
    if set(pivot) != set(other):
        raise FinderError(f"pivot has layers {sorted(pivot)}, the other language {sorted(other)}")
    return {layer: shift(pivot[layer], other[layer], method, **params) for layer in sorted(pivot)}


def middle_layer(activations: Activations, layers: Sequence[int]) -> tuple[int, ...]:
    """The model's middle block (``n_layers // 2``) if among ``layers``, else the middle of ``layers``: the layer
    the steering evaluation applies single-layer interventions at."""
    middle = int(activations.model.get("n_layers") or 0) // 2
    chosen = sorted(layers)
    return (middle,) if middle in chosen else (chosen[len(chosen) // 2],)


def fit_shift(
    activations: Activations,
    language: str,
    *,
    pivot: str = "eng",
    component: str = "resid",
    method: str = "mean",
    layers: Sequence[int] | None = None,
    **params,
) -> ShiftVector:
    """Shift vectors from ``language`` to ``pivot`` on every (or the given) ``component`` layer of
    ``activations``; ``params`` go to the strategy (``C``, ``max_iter`` for ``logistic``). Recommends the middle
    layer (``xlalign steer`` applies it there unless told otherwise)."""
    data = dict(activations.by_layer(component, [pivot, language], layers))
    vectors = fit_shift_vectors(
        {layer: by[pivot] for layer, by in data.items()},
        {layer: by[language] for layer, by in data.items()},
        method,
        **params,
    )
    return ShiftVector(
        vectors,
        component,
        pivot,
        language,
        method,
        dict(params),
        dict(activations.model),
        middle_layer(activations, list(vectors)),
    )
