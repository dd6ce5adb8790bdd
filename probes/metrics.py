"""Alignment metrics as pure functions over pooled sentence matrices, and a tidy per-layer table.

Rows of the two matrices are the same sentences (row i of the pivot is the translation of row i of the
other language). Every table has the columns ``layer, language, metric, value``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from probes.sites import Site
from probes.store import ActivationStore


def cosine_matrix(a: Float[Tensor, "n d"], b: Float[Tensor, "m d"]) -> Float[Tensor, "n m"]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (in float64)."""
    a = torch.nn.functional.normalize(a.double().flatten(1), dim=1)
    b = torch.nn.functional.normalize(b.double().flatten(1), dim=1)
    return a @ b.T


def mexa(pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"]) -> float:
    """MEXA alignment (Kargaran et al. 2024): the fraction of sentences i whose translation similarity
    S[i, i] is strictly greater than every other entry of row i and of column i of the cosine matrix."""
    sims = cosine_matrix(pivot, other)
    diagonal = sims.diagonal()
    off = sims.clone().fill_diagonal_(float("-inf"))
    beats_row = diagonal > off.amax(dim=1)
    beats_column = diagonal > off.amax(dim=0)
    return (beats_row & beats_column).double().mean().item()


def retrieval_top1(pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"]) -> float:
    """Bitext retrieval accuracy: the fraction of ``other`` sentences whose nearest pivot sentence (cosine)
    is their translation."""
    sims = cosine_matrix(other, pivot)
    return (sims.argmax(dim=1) == torch.arange(len(sims))).double().mean().item()


def retrieval_top1_reverse(pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"]) -> float:
    """Retrieval in the other direction: pivot sentences as queries, ``other`` as candidates."""
    return retrieval_top1(other, pivot)


PAIR_METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "mexa": mexa,
    "retrieval_top1": retrieval_top1,
    "retrieval_top1_reverse": retrieval_top1_reverse,
}


def measure_store(
    store: ActivationStore,
    *,
    pivot: str = "eng",
    metrics: Sequence[str] = ("retrieval_top1", "mexa"),
    component: str = "resid",
) -> pd.DataFrame:
    """Every metric, per layer of ``component`` and per language against ``pivot``, as a tidy table."""
    unknown = [name for name in metrics if name not in PAIR_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {', '.join(PAIR_METRICS)}")
    if pivot not in store.languages:
        raise ValueError(f"pivot language {pivot!r} is not in {store.path}; it has {', '.join(store.languages)}")
    layers = [site.layer for site in store.sites if site.component == component]
    if not layers:
        raise ValueError(f"{store.path} has no {component!r} sites; it has {', '.join(map(str, store.sites))}")
    rows = []
    for layer in layers:
        site = Site(layer, component)
        reference = store.get(site, pivot)
        for language in store.languages:
            if language == pivot:
                continue
            vectors = store.get(site, language)
            for name in metrics:
                rows.append((layer, language, name, PAIR_METRICS[name](reference, vectors)))
    return pd.DataFrame(rows, columns=["layer", "language", "metric", "value"])
