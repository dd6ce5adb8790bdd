"""Directions and maps from one language's activations to the pivot's (METHODS, "Finding what is
language-specific", items 3-6).

- Shift vectors (item 3): per layer, a vector that moves language-l activations towards the pivot's,
  by one of three strategies following steering-vectors' ``aggregators.py`` (``mean_aggregator``,
  ``pca_aggregator``, ``logistic_aggregator``): :func:`mean_shift`, :func:`pca_shift`, :func:`logistic_shift`.
- Language-specific heads (item 4, CLAIM): :class:`HeadProbe`.
- Linear maps (items 5-6): :func:`fit_incline` (least squares, INCLINE) and :func:`fit_procrustes`
  (orthogonal), with :func:`orthogonality_deviation` as a diagnostic.

Results are :class:`ShiftVector` and :class:`LinearMap` artifacts (safetensors + JSON metadata, see
:mod:`probes.artifacts`) that name the model they were found on and refuse to load onto another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from torch import Tensor

from probes.artifacts import ArtifactError, check_model, load_artifact, save_artifact
from probes.langid import Activations, check_folds, iter_layers, probe_pipeline
from probes.models import model_identity
from probes.sites import COMPONENTS, Site, SiteError, n_heads, tap, width
from probes.store import ActivationStore

# --- shift vectors ---------------------------------------------------------------------------------------


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
        raise ValueError(f"pca shift needs paired rows: pivot {tuple(pivot.shape)}, other {tuple(other.shape)}")
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
        raise ValueError(f"unknown shift method {method!r}; choose one of {', '.join(SHIFT_METHODS)}")
    if pivot.shape[1:] != other.shape[1:]:
        raise ValueError(f"pivot vectors have shape {tuple(pivot.shape[1:])}, the other's {tuple(other.shape[1:])}")
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
        raise ValueError(f"pivot has layers {sorted(pivot)}, the other language {sorted(other)}")
    return {layer: shift(pivot[layer], other[layer], method, **params) for layer in sorted(pivot)}


@dataclass(frozen=True, eq=False)
class ShiftVector:
    """Per-layer vectors that move ``language`` towards ``pivot`` at ``component`` (add ``alpha * v``).

    ``vectors[layer]`` has shape ``(d,)``, or ``(heads, head_dim)`` for ``head``. ``model`` is the
    :func:`probes.models.model_identity` of the model the vectors were found on.
    """

    vectors: dict[int, Tensor]
    component: str
    pivot: str
    language: str
    method: str
    params: dict
    model: dict

    KIND = "ShiftVector"

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; choose one of {', '.join(COMPONENTS)}")
        if not self.vectors:
            raise ValueError("a ShiftVector needs at least one layer")
        shapes = {layer: tuple(v.shape) for layer, v in self.vectors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"all layers' vectors must have one shape; got {shapes}")
        if self.component == "head" and len(next(iter(shapes.values()))) != 2:
            raise ValueError(f"head vectors have shape (heads, head_dim); got {shapes}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @classmethod
    def from_store(
        cls,
        store: ActivationStore,
        language: str,
        *,
        pivot: str = "eng",
        component: str = "resid",
        method: str = "mean",
        layers: list[int] | None = None,
        model: dict | None = None,
        **params,
    ) -> ShiftVector:
        """Shift vectors on every (or the given) ``component`` layer of ``store`` (or of pooled activations
        ``{layer: {language: (n, ...)}}``, then with ``model``'s identity); ``params`` as in :func:`shift`."""
        data = dict(iter_layers(store, component, [pivot, language], layers))
        vectors = fit_shift_vectors(
            {layer: by[pivot] for layer, by in data.items()}, {layer: by[language] for layer, by in data.items()},
            method, **params,
        )  # fmt: skip
        identity = model if model is not None else store.meta["model"]
        return cls(vectors, component, pivot, language, method, dict(params), identity)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        tensors = {str(Site(layer, self.component)): v for layer, v in self.vectors.items()}
        meta = {"component": self.component, "pivot": self.pivot, "language": self.language, "method": self.method,
                "params": self.params, "model": self.model, "layers": self.layers}  # fmt: skip
        return save_artifact(path, self.KIND, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> ShiftVector:
        """Read a saved ShiftVector; with ``model``, also check it was made on that model and fits its sizes."""
        tensors, meta = load_artifact(path, cls.KIND)
        vectors = {layer: _tensor(tensors, str(Site(layer, meta["component"])), path) for layer in meta["layers"]}
        loaded = cls(
            vectors, meta["component"], meta["pivot"], meta["language"], meta["method"], meta["params"], meta["model"]
        )
        if model is not None:
            check_model(meta, model, where=str(path))
            expected = _site_shape(model, loaded.component)
            for layer, vector in vectors.items():
                _check_shape(path, model, Site(layer, loaded.component), "vector", vector, expected)
        return loaded


# --- language-specific heads (CLAIM) -------------------------------------------------------------------------


class HeadProbe:
    """Language-specific attention heads (CLAIM, Ye et al. 2025; paper only, no released code).

    For every (layer, head), a logistic regression (standardised features, ``C``) separates the pivot's
    pooled head outputs (the per-head input of the output projection) from language l's; its ``cv``-fold
    stratified cross-validated accuracy ranks the heads. The shift of a head is pivot mean minus l mean of
    its output. Selecting the top-k heads by this accuracy is our reading of the paper.

    After :meth:`fit`: ``ranking_`` (DataFrame ``layer, head, accuracy``, best first), ``shifts_``
    (``{layer: (heads, head_dim)}``), ``model_`` (the store's model identity, or None for dict input).
    """

    def __init__(self, cv: int = 5, C: float = 1.0, max_iter: int = 1000, n_jobs: int | None = None) -> None:
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.n_jobs = n_jobs

    def fit(self, data: Activations, language: str, *, pivot: str = "eng") -> HeadProbe:
        """Probe every ``head`` layer of ``data`` (a store, or ``{layer: {language: (n, heads, head_dim)}}``)."""
        rows, self.shifts_ = [], {}
        for layer, by_language in iter_layers(data, "head", [pivot, language]):
            ours, theirs = by_language[pivot], by_language[language]
            if ours.dim() != 3:
                raise ValueError(f"layer {layer}: head activations are (n, heads, head_dim); got {tuple(ours.shape)}")
            check_folds({pivot: len(ours), language: len(theirs)}, self.cv, f"head layer {layer}")
            labels = np.r_[np.ones(len(ours)), np.zeros(len(theirs))]
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=0)
            for head in range(ours.shape[1]):
                features = torch.cat([ours[:, head], theirs[:, head]]).double().numpy()
                scores = cross_val_score(
                    probe_pipeline(self.C, self.max_iter), features, labels, cv=folds, n_jobs=self.n_jobs
                )
                rows.append((layer, head, float(scores.mean())))
            self.shifts_[layer] = mean_shift(ours, theirs)
        self.ranking_ = (
            pd.DataFrame(rows, columns=["layer", "head", "accuracy"])
            .sort_values("accuracy", ascending=False, kind="stable")
            .reset_index(drop=True)
        )
        self.pivot_, self.language_ = pivot, language
        self.model_ = data.meta["model"] if isinstance(data, ActivationStore) else None
        return self

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` best-separating heads as ``(layer, head)``."""
        best = self.ranking_.head(k)
        return [(int(layer), int(head)) for layer, head in zip(best["layer"], best["head"])]

    def shift_vector(self, k: int, model=None) -> ShiftVector:
        """A ``head`` ShiftVector holding the shifts of the top-``k`` heads (other heads zero; layers without a
        top head left out). ``model`` supplies the identity when the probe was fitted on dicts."""
        identity = model_identity(model) if model is not None else self.model_
        if identity is None:
            raise ValueError("fitted on dicts: pass model= (the model the activations came from) to name it")
        heads = self.top_heads(k)
        vectors: dict[int, Tensor] = {}
        for layer, head in heads:
            vectors.setdefault(layer, torch.zeros_like(self.shifts_[layer]))[head] = self.shifts_[layer][head]
        params = {"k": k, "heads": [list(h) for h in heads], "cv": self.cv, "C": self.C,
                  "accuracy": self.ranking_["accuracy"].head(k).tolist()}  # fmt: skip
        return ShiftVector(vectors, "head", self.pivot_, self.language_, "claim", params, identity)


# --- linear maps ----------------------------------------------------------------------------------------------


def fit_incline(
    X_l: Float[Tensor, "n d"], X_pivot: Float[Tensor, "n d"], ridge: float = 0.0
) -> Float[Tensor, "d d"]:
    """INCLINE map (Wang et al. 2025, code weixuan-wang123/INCLINE): ``W = argmin ||X_l W - X_pivot||^2``.

    No bias, as ``np.linalg.lstsq(X_l, X_pivot, rcond=None)`` in the released code (with fewer pairs than
    dimensions, the minimum-norm solution). ``ridge > 0`` solves ``(X^T X + ridge I) W = X^T X_pivot``.
    Computed in float64, returned in ``X_l``'s dtype. What the released code feeds it: per layer, the
    token mean (BOS included) of the output of the module named ``mlp`` over each of 500 training pairs,
    every odd pair made code-switched (l + " " + English for BLOOM, English + newline + l for Llama) and
    mapped to the English sentence doubled. For Llama that module output is our ``mlp_out``; BLOOM's MLP
    module adds the residual itself, so there it is the block output, our ``resid``.
    """
    _check_pairs(X_l, X_pivot)
    x, y = X_l.double().numpy(), X_pivot.double().numpy()
    if ridge > 0:
        W = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    else:
        W = np.linalg.lstsq(x, y, rcond=None)[0]
    return torch.from_numpy(W).to(X_l.dtype)


def fit_procrustes(
    X_l: Float[Tensor, "n d"], X_pivot: Float[Tensor, "n d"], center: bool = True, normalize: bool = True
) -> tuple[Float[Tensor, "d d"], Float[Tensor, " d"], Float[Tensor, " d"]]:
    """Orthogonal map with normalisation (Kulshreshtha et al. 2020): returns ``(W, mean_l, mean_pivot)``.

    Both sides are centred (``center``; the means are returned, zeros otherwise), then each row is scaled to
    unit length (``normalize``); ``W = U V^T`` from the SVD ``U S V^T`` of ``X_l^T X_pivot``
    (``scipy.linalg.orthogonal_procrustes``). Apply as ``(x - mean_l) W + mean_pivot``: for an orthogonal
    ``W``, length normalisation only weights the fit, it does not change the map.
    """
    _check_pairs(X_l, X_pivot)
    x, y = X_l.double().numpy(), X_pivot.double().numpy()
    mean_x = x.mean(0) if center else np.zeros(x.shape[1])
    mean_y = y.mean(0) if center else np.zeros(y.shape[1])
    x, y = x - mean_x, y - mean_y
    if normalize:
        x, y = _unit_rows(x), _unit_rows(y)
    W = scipy.linalg.orthogonal_procrustes(x, y)[0]
    return tuple(torch.from_numpy(a).to(X_l.dtype) for a in (W, mean_x, mean_y))  # type: ignore[return-value]


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms == 0, 1.0, norms)


def orthogonality_deviation(W: Float[Tensor, "d d"]) -> float:
    """``||W^T W - I||_F / ||I||_F`` (``||I||_F = sqrt(d)``): 0 for an orthogonal map; a scaled rotation
    ``s R`` gives ``|s^2 - 1|``. A diagnostic of how far a least-squares map is from a rotation."""
    W = W.double()
    eye = torch.eye(W.shape[1], dtype=W.dtype)
    return (torch.linalg.matrix_norm(W.T @ W - eye) / torch.linalg.matrix_norm(eye)).item()


def _check_pairs(X_l: Tensor, X_pivot: Tensor) -> None:
    if X_l.dim() != 2 or X_l.shape != X_pivot.shape:
        raise ValueError(f"a linear map needs paired (n, d) matrices; got {tuple(X_l.shape)}, {tuple(X_pivot.shape)}")


MAP_METHODS = ("incline", "procrustes")
MAP_COMPONENTS = ("resid", "mlp_out")


@dataclass(frozen=True, eq=False)
class LinearMap:
    """Per-layer matrices ``W`` (d, d) mapping ``language`` activations at ``component`` towards ``pivot``.

    ``method`` is ``incline`` (least squares, ``params['ridge']``) or ``procrustes`` (orthogonal; ``params``
    says ``center``/``normalize``, and ``mean_source`` / ``mean_pivot`` hold the centring means per layer).
    ``model`` is the :func:`probes.models.model_identity` of the model the map was fitted on.
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

    KIND = "LinearMap"

    def __post_init__(self) -> None:
        if self.component not in MAP_COMPONENTS:
            raise ValueError(f"a LinearMap acts on {' or '.join(MAP_COMPONENTS)}, not {self.component!r}")
        if self.method not in MAP_METHODS:
            raise ValueError(f"unknown map method {self.method!r}; choose one of {', '.join(MAP_METHODS)}")
        if not self.matrices:
            raise ValueError("a LinearMap needs at least one layer")
        for layer, W in self.matrices.items():
            if W.dim() != 2 or W.shape[0] != W.shape[1]:
                raise ValueError(f"layer {layer}: W must be square (d, d); got {tuple(W.shape)}")
        if self.method == "procrustes" and not set(self.matrices) == set(self.mean_source) == set(self.mean_pivot):
            raise ValueError("a procrustes LinearMap needs mean_source and mean_pivot for every layer of matrices")

    @property
    def layers(self) -> list[int]:
        return sorted(self.matrices)

    def transform(self, layer: int, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        """The map at ``layer``: ``x W`` (incline) or ``(x - mean_source) W + mean_pivot`` (procrustes)."""
        W = self.matrices[layer].to(x.dtype)
        if self.method == "incline":
            return x @ W
        return (x - self.mean_source[layer].to(x.dtype)) @ W + self.mean_pivot[layer].to(x.dtype)

    @classmethod
    def from_store(
        cls,
        store: ActivationStore,
        language: str,
        *,
        pivot: str = "eng",
        component: str = "resid",
        method: str = "incline",
        layers: list[int] | None = None,
        ridge: float = 0.0,
        center: bool = True,
        normalize: bool = True,
        model: dict | None = None,
    ) -> LinearMap:
        """Fit a map on every (or the given) ``component`` layer of ``store`` (rows are translation pairs), or
        of pooled activations ``{layer: {language: (n, d)}}``, then with ``model``'s identity."""
        if component not in MAP_COMPONENTS or method not in MAP_METHODS:
            raise ValueError(f"component must be one of {MAP_COMPONENTS} and method one of {MAP_METHODS}")
        matrices, mean_source, mean_pivot = {}, {}, {}
        for layer, by_language in iter_layers(store, component, [pivot, language], layers):
            if method == "incline":
                matrices[layer] = fit_incline(by_language[language], by_language[pivot], ridge)
            else:
                matrices[layer], mean_source[layer], mean_pivot[layer] = fit_procrustes(
                    by_language[language], by_language[pivot], center, normalize
                )
        params = {"ridge": ridge} if method == "incline" else {"center": center, "normalize": normalize}
        identity = model if model is not None else store.meta["model"]
        return cls(matrices, component, method, language, pivot, params, identity, mean_source, mean_pivot)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        tensors = {f"W.{layer}": W for layer, W in self.matrices.items()}
        tensors |= {f"mean_source.{layer}": m for layer, m in self.mean_source.items()}
        tensors |= {f"mean_pivot.{layer}": m for layer, m in self.mean_pivot.items()}
        meta = {"component": self.component, "method": self.method, "language": self.language, "pivot": self.pivot,
                "params": self.params, "model": self.model, "layers": self.layers}  # fmt: skip
        return save_artifact(path, self.KIND, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> LinearMap:
        """Read a saved LinearMap; with ``model``, also check it was made on that model and fits its sizes."""
        tensors, meta = load_artifact(path, cls.KIND)
        layers = meta["layers"]
        matrices = {layer: _tensor(tensors, f"W.{layer}", path) for layer in layers}
        procrustes = meta["method"] == "procrustes"
        means = [
            {layer: _tensor(tensors, f"{name}.{layer}", path) for layer in layers} if procrustes else {}
            for name in ("mean_source", "mean_pivot")
        ]
        loaded = cls(matrices, meta["component"], meta["method"], meta["language"], meta["pivot"], meta["params"],
                     meta["model"], *means)  # fmt: skip
        if model is not None:
            check_model(meta, model, where=str(path))
            d = width(model, loaded.component)
            for layer in layers:
                site = Site(layer, loaded.component)
                _check_shape(path, model, site, "W", matrices[layer], (d, d))
                for name, values in zip(("mean_source", "mean_pivot"), means):
                    if values:
                        _check_shape(path, model, site, name, values[layer], (d,))
        return loaded


# --- artifact helpers -------------------------------------------------------------------------------------


def _tensor(tensors: dict[str, Tensor], key: str, path) -> Tensor:
    if key not in tensors:
        raise ArtifactError(f"{path}: tensor {key!r} is missing; the file has {', '.join(sorted(tensors))}")
    return tensors[key]


def _site_shape(model, component: str) -> tuple[int, ...]:
    if component == "head":
        return (n_heads(model), width(model, "head"))
    return (width(model, component),)


def _check_shape(path, model, site: Site, name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    """Raise unless ``site`` exists in ``model`` and ``tensor`` has the ``expected`` shape."""
    try:
        tap(model, site)
    except SiteError as error:
        raise ArtifactError(f"{path}: {error}") from None
    if tuple(tensor.shape) != expected:
        raise ArtifactError(
            f"{path}: {name} at {site} has shape {tuple(tensor.shape)}, but this {model.config.model_type} model "
            f"needs {expected} there"
        )
