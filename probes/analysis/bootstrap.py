"""Percentile bootstrap intervals over sentences."""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from probes.analysis.alignment import MetricError


def bootstrap_ci(
    metric_fn: Callable[..., float | Tensor],
    *matrices: Float[Tensor, "n ..."],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric over sentences.

    Each resample draws n sentence indices with replacement, the same indices for every matrix. ``metric_fn``
    is evaluated in the first of these ways that applies:

    - it returns per-sentence scores (1-D, length n; e.g. ``partial(mexa, per_sentence=True)``): they are
      computed once, and each resample averages them;
    - it takes ``weights`` (sentence multiplicities, shape ``(n_boot, n)``; e.g. :func:`linear_cka`): one call
      returns all ``n_boot`` values;
    - otherwise it is recomputed on each resample of the matrices.

    Give mean-over-sentence metrics in the per-sentence form: recomputing them on a resample would put exact
    copies of a translation among its rivals (MEXA's strict rule then fails every repeated sentence).
    """
    n = len(matrices[0])
    shapes = [tuple(matrix.shape) for matrix in matrices]
    if any(shape[0] != n for shape in shapes):
        raise MetricError(f"bootstrap_ci needs matrices of the same sentences; got shapes {shapes}")
    rows = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    ones = torch.ones(n_boot, n, dtype=torch.float64)
    counts = torch.zeros_like(ones).scatter_add_(1, rows, ones)
    value = metric_fn(*matrices)
    if isinstance(value, Tensor) and value.ndim == 1:
        if len(value) != n:
            raise MetricError(f"metric_fn returned {len(value)} per-sentence scores for {n} sentences")
        estimates = counts @ value.double() / n
    elif "weights" in inspect.signature(metric_fn).parameters:
        estimates = metric_fn(*matrices, weights=counts)
    else:
        estimates = torch.tensor([float(metric_fn(*(m[r] for m in matrices))) for r in rows], dtype=torch.float64)
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(estimates.double(), quantiles)
    return low.item(), high.item()
