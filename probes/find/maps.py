"""Linear maps from one language's activations to the pivot's (docs/methods.md): :func:`fit_incline` (least
squares, INCLINE) and :func:`fit_procrustes` (orthogonal), with :func:`orthogonality_deviation` as a diagnostic;
:func:`fit_map` fits one per layer into a :class:`~probes.artifacts.LinearMap` artifact."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
import torch
from jaxtyping import Float
from torch import Tensor

from probes.analysis.activations import Activations
from probes.artifacts.linear_map import MAP_COMPONENTS, MAP_METHODS, LinearMap
from probes.find.shifts import middle_layer
from probes.find.errors import FinderError


def fit_incline(X_l: Float[Tensor, "n d"], X_pivot: Float[Tensor, "n d"], ridge: float = 0.0) -> Float[Tensor, "d d"]:
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


SWITCH_STYLES = ("llama", "bloom", "none")


def code_switched_pairs(
    source: Sequence[str], pivot: Sequence[str], style: str = "llama"
) -> tuple[list[str], list[str]]:
    """INCLINE's training pairs from translations ``source[i] <-> pivot[i]``: the even pairs (0-based) stay
    plain, every odd pair is code-switched. ``llama`` (intervention_llama.py): ``pivot + "\\n" + source`` ->
    ``pivot + "\\n" + pivot``; ``bloom`` (intervention.py): ``source + " " + pivot`` -> ``pivot + " " + pivot``;
    ``none``: every pair plain. (The released code also drops pairs over 500 tokens; here
    ``Tokenization.max_length`` truncates instead.) Returns ``(source side, pivot side)``."""
    if style not in SWITCH_STYLES:
        raise FinderError(f"code-switching style {style!r}: choose from {', '.join(SWITCH_STYLES)}")
    if len(source) != len(pivot):
        raise FinderError(f"code-switched pairs need parallel texts; got {len(source)} and {len(pivot)}")
    joined = {"llama": lambda s, p: (f"{p}\n{s}", f"{p}\n{p}"), "bloom": lambda s, p: (f"{s} {p}", f"{p} {p}")}
    pairs = [
        joined[style](s, p) if style != "none" and index % 2 == 1 else (s, p)
        for index, (s, p) in enumerate(zip(source, pivot))
    ]
    return [s for s, _ in pairs], [p for _, p in pairs]


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
        raise FinderError(f"a linear map needs paired (n, d) matrices; got {tuple(X_l.shape)}, {tuple(X_pivot.shape)}")


def fit_map(
    activations: Activations,
    language: str,
    *,
    pivot: str = "eng",
    component: str = "resid",
    method: str = "incline",
    layers: Sequence[int] | None = None,
    ridge: float = 0.0,
    center: bool = True,
    normalize: bool = True,
) -> LinearMap:
    """A map from ``language`` to ``pivot`` on every (or the given) ``component`` layer (rows are translation
    pairs). INCLINE recommends every layer (its rule edits all of them), Procrustes the middle one."""
    if component not in MAP_COMPONENTS or method not in MAP_METHODS:
        raise FinderError(f"component must be one of {MAP_COMPONENTS} and method one of {MAP_METHODS}")
    matrices, mean_source, mean_pivot = {}, {}, {}
    for layer, by_language in activations.by_layer(component, [pivot, language], layers):
        if method == "incline":
            matrices[layer] = fit_incline(by_language[language], by_language[pivot], ridge)
        else:
            matrices[layer], mean_source[layer], mean_pivot[layer] = fit_procrustes(
                by_language[language], by_language[pivot], center, normalize
            )
    params = {"ridge": ridge} if method == "incline" else {"center": center, "normalize": normalize}
    recommended = tuple(sorted(matrices)) if method == "incline" else middle_layer(activations, list(matrices))
    return LinearMap(
        matrices,
        component,
        method,
        language,
        pivot,
        params,
        dict(activations.model),
        mean_source,
        mean_pivot,
        recommended,
    )
