"""Alignment metrics as pure functions over pooled sentence matrices.

Rows of the two matrices are the same sentences (row i of the pivot is the translation of row i of the
other language). Vectors of any shape per sentence are flattened. Inputs are checked: different sentence
counts or widths, NaN or infinite rows, and too few sentences for a metric are errors naming the shapes.

Metrics that are a mean over sentences (MEXA, retrieval, the matched-random gap, NeuronXA, neuron overlap) take
``per_sentence=True`` to return the per-sentence scores instead; :func:`bootstrap_ci` resamples those.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.choices import ALL_METRICS, NEURON_POOLINGS  # noqa: F401 (part of this module's API)
from probes.errors import XlalignError


# Elements per comparison block in strong_alignment_ap: bounds its working memory to a few tens of MB.
_BLOCK = 2**22


class MetricError(XlalignError):
    """Inputs a metric cannot score: misaligned sentences, NaN rows, too few sentences."""


def check_pair(pivot: Tensor, other: Tensor, metric: str, minimum: int = 2, same_width: bool = True) -> None:
    """Raise unless ``pivot`` and ``other`` are the same ``n >= minimum`` sentences with finite values."""
    shapes = f"pivot {tuple(pivot.shape)}, other {tuple(other.shape)}"
    if pivot.dim() < 2 or other.dim() < 2:
        raise MetricError(f"{metric}: expected (sentences, *dims) matrices, got {shapes}")
    if len(pivot) != len(other):
        raise MetricError(
            f"{metric}: the two sides hold {len(pivot)} and {len(other)} sentences ({shapes}); "
            "rows must be the same sentences (row i of one is the translation of row i of the other)"
        )
    if same_width and pivot[0].numel() != other[0].numel():
        raise MetricError(f"{metric}: vectors of different widths ({shapes})")
    if len(pivot) < minimum:
        raise MetricError(f"{metric} needs at least {minimum} sentences, got {len(pivot)} ({shapes})")
    check_finite(pivot, metric, "pivot")
    check_finite(other, metric, "other")


def check_finite(matrix: Tensor, metric: str, side: str) -> None:
    bad = (~torch.isfinite(matrix.flatten(1))).any(dim=1).nonzero().flatten()
    if len(bad):
        raise MetricError(
            f"{metric}: the {side} matrix {tuple(matrix.shape)} has NaN or infinite values in rows "
            f"{bad[:8].tolist()}{' ...' if len(bad) > 8 else ''}"
        )


def cosine_matrix(a: Float[Tensor, "n d"], b: Float[Tensor, "m d"]) -> Float[Tensor, "n m"]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (in float64)."""
    a = torch.nn.functional.normalize(a.double().flatten(1), dim=1)
    b = torch.nn.functional.normalize(b.double().flatten(1), dim=1)
    return a @ b.T


def _mean(scores: Tensor) -> float:
    return scores.double().mean().item()


def _strict_hits(sims: Float[Tensor, "n n"]) -> Bool[Tensor, "n"]:
    """MEXA's rule: S[i, i] is strictly greater than every other entry of row i and of column i."""
    diagonal = sims.diagonal()
    off = sims.clone().fill_diagonal_(float("-inf"))
    return (diagonal > off.amax(dim=1)) & (diagonal > off.amax(dim=0))


def _topk_hits(scores: Float[Tensor, "n n"], k: int) -> Bool[Tensor, "n"]:
    """Whether fewer than ``k`` candidates score at least as high as the translation (ties count against it)."""
    rivals = (scores >= scores.diagonal()[:, None]).sum(dim=1) - 1
    return rivals < k


def _ratio_margin(sims: Float[Tensor, "n m"], k: int) -> Float[Tensor, "n m"]:
    """Ratio margin (Artetxe & Schwenk 2019): cos(x, y) / (mean cos of x's k nearest candidates / 2
    + mean cos of y's k nearest queries / 2)."""
    query_neighbours = sims.topk(min(k, sims.shape[1]), dim=1).values.mean(dim=1)
    candidate_neighbours = sims.topk(min(k, sims.shape[0]), dim=0).values.mean(dim=0)
    return sims / ((query_neighbours[:, None] + candidate_neighbours[None, :]) / 2)


def mexa(
    pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"], *, per_sentence: bool = False
) -> float | Bool[Tensor, "n"]:
    """MEXA alignment (Kargaran et al. 2024): the fraction of sentences i whose translation similarity
    S[i, i] is strictly greater than every other entry of row i and of column i of the cosine matrix."""
    check_pair(pivot, other, "mexa")
    hits = _strict_hits(cosine_matrix(pivot, other))
    return hits if per_sentence else _mean(hits)


def retrieval_topk(
    pivot: Float[Tensor, "n d"],
    other: Float[Tensor, "n d"],
    k: int = 1,
    *,
    margin: bool = False,
    margin_k: int = 4,
    per_sentence: bool = False,
) -> float | Bool[Tensor, "n"]:
    """Bitext retrieval accuracy: the fraction of ``other`` sentences whose translation is among the ``k``
    best-scoring pivot sentences. A pivot sentence tied with the translation counts as ranked above it.

    The score is cosine, or with ``margin=True`` the ratio margin of Artetxe & Schwenk (2019) over
    ``margin_k`` nearest neighbours in each direction (their default 4), which discounts "hub" pivot
    sentences that are near everything. The margin assumes positive similarities, as with LASER.
    """
    check_pair(pivot, other, "retrieval")
    if not 1 <= k <= len(pivot):
        raise MetricError(f"retrieval top-{k}: k must be between 1 and the {len(pivot)} candidate sentences")
    scores = cosine_matrix(other, pivot)
    if margin:
        scores = _ratio_margin(scores, margin_k)
    hits = _topk_hits(scores, k)
    return hits if per_sentence else _mean(hits)


def retrieval_top1(
    pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"], *, per_sentence: bool = False
) -> float | Bool[Tensor, "n"]:
    """Bitext retrieval accuracy: the fraction of ``other`` sentences whose nearest pivot sentence (cosine)
    is their translation."""
    return retrieval_topk(pivot, other, per_sentence=per_sentence)


def retrieval_top1_reverse(
    pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"], *, per_sentence: bool = False
) -> float | Bool[Tensor, "n"]:
    """Retrieval in the other direction: pivot sentences as queries, ``other`` as candidates."""
    return retrieval_topk(other, pivot, per_sentence=per_sentence)


def strong_alignment_ap(matrices: dict[str, Float[Tensor, "n d"]]) -> dict[str, Float[Tensor, "n"]]:
    """Average precision of every query in the LAReQA strong-alignment setting (Roy et al. 2020).

    All sentences of all languages form one pool. Each sentence is a query; its relevant items are its
    translations in the other languages; the rest of the pool (same-language sentences included) ranks by
    cosine, the query itself left out. Returns, per language, the AP of each of its sentences as a query.
    Ties are resolved as in ``sklearn.metrics.average_precision_score``: precision at a relevant item counts
    every item scoring at least as high.
    """
    languages = list(matrices)
    sizes = {language: tuple(matrix.shape) for language, matrix in matrices.items()}
    if len(languages) < 2 or len({shape[0] for shape in sizes.values()}) != 1:
        raise MetricError(f"strong alignment needs two or more languages with the same sentences; got {sizes}")
    for language, matrix in matrices.items():
        check_finite(matrix, "strong alignment", language)
    n_languages, n = len(languages), len(matrices[languages[0]])
    pool = torch.cat([matrices[language].flatten(1) for language in languages])
    queries = torch.arange(len(pool))
    # Pool positions of each query's translations: sentence q % n in every language but q's own.
    positions = torch.arange(n_languages)[None, :] * n + (queries % n)[:, None]
    relevant = positions[torch.arange(n_languages)[None, :] != (queries // n)[:, None]].view(len(pool), -1)
    ap = []
    for block in queries.split(max(1, _BLOCK // (len(pool) * (n_languages - 1)))):
        sims = cosine_matrix(pool[block], pool)
        sims[torch.arange(len(block)), block] = float("-inf")
        targets = sims.gather(1, relevant[block])
        ranked_at_or_above = (sims[:, None, :] >= targets[:, :, None]).sum(dim=2)
        relevant_at_or_above = (targets[:, None, :] >= targets[:, :, None]).sum(dim=2)
        ap.append((relevant_at_or_above / ranked_at_or_above).mean(dim=1))
    return dict(zip(languages, torch.cat(ap).split(n)))


def strong_alignment_map(matrices: dict[str, Float[Tensor, "n d"]]) -> float:
    """LAReQA strong-alignment mean average precision over every query of every language."""
    return _mean(torch.cat(list(strong_alignment_ap(matrices).values())))


def strong_alignment_map_by_language(matrices: dict[str, Float[Tensor, "n d"]]) -> dict[str, float]:
    """Strong-alignment mAP over the queries of each language, in the pool of all ``matrices``."""
    return {language: _mean(ap) for language, ap in strong_alignment_ap(matrices).items()}


def matched_random_gap(
    pivot: Float[Tensor, "n d"], other: Float[Tensor, "n d"], *, per_sentence: bool = False
) -> dict[str, float] | dict[str, Float[Tensor, "n"]]:
    """Matched-vs-random similarity (Liu et al. 2025): ``matched`` = mean cosine of translation pairs,
    ``random`` = mean cosine of all non-translation cross-language pairs (exact, not sampled), ``gap`` =
    matched - random. Only the gap measures alignment; a shared offset raises both means.

    Per sentence, ``random`` is the mean cosine of sentence i (in either language) with the non-translations
    in the other language, so that every per-sentence series averages to the overall value.
    """
    check_pair(pivot, other, "matched_random_gap")
    sims = cosine_matrix(pivot, other)
    matched = sims.diagonal()
    random = (sims.sum(dim=1) + sims.sum(dim=0) - 2 * matched) / (2 * (len(sims) - 1))
    scores = {"matched": matched, "random": random, "gap": matched - random}
    return scores if per_sentence else {name: _mean(values) for name, values in scores.items()}


def _centred_gram(x: Float[Tensor, "n d"]) -> Float[Tensor, "n n"]:
    """Gram matrix of the column-centred rows. Centring is exact for CKA (it ignores a constant shift) and keeps
    the expanded HSIC of :func:`linear_cka` well conditioned."""
    x = x.double().flatten(1)
    x = x - x.mean(dim=0)
    return x @ x.T


def linear_cka(
    x: Float[Tensor, "n d"], y: Float[Tensor, "n e"], *, weights: Float[Tensor, "b n"] | None = None
) -> float | Float[Tensor, "b"]:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same sentences:
    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K, L the linear Gram matrices, HSIC(K, L) = tr(KHLH).

    ``weights`` (sentence multiplicities, one row per resample) gives the CKA of each resample at once, from
    the same Gram matrices; that is how :func:`bootstrap_ci` resamples it.
    """
    check_pair(x, y, "cka", minimum=3, same_width=False)
    k, l = _centred_gram(x), _centred_gram(y)
    w = torch.ones(1, len(k), dtype=torch.float64) if weights is None else weights.double()
    m = w.sum(dim=1)

    def hsic(a: Tensor, b: Tensor) -> Tensor:  # tr(A H B H) of the resample, written with multiplicities
        wa, wb = w @ a, w @ b
        return (
            ((w @ (a * b)) * w).sum(dim=1)
            - 2 * (w * wa * wb).sum(dim=1) / m
            + (w * wa).sum(dim=1) * (w * wb).sum(dim=1) / m**2
        )

    cka = hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt()
    return cka.item() if weights is None else cka


def _state_similarity(
    pivot_states: Float[Tensor, "n neurons"], other_states: Float[Tensor, "n neurons"], binary: bool, threshold: float
) -> Float[Tensor, "n n"]:
    """Jaccard of thresholded neuron states (two empty states count as identical), or cosine of fractions."""
    if not binary:
        return cosine_matrix(pivot_states, other_states)
    a = (pivot_states.flatten(1) > threshold).double()
    b = (other_states.flatten(1) > threshold).double()
    both = a @ b.T
    either = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - both
    return torch.where(either > 0, both / either, 1.0)


def neuronxa(
    pivot_states: Float[Tensor, "n neurons"], other_states: Float[Tensor, "n neurons"], *, per_sentence: bool = False
) -> float | Bool[Tensor, "n"]:
    """NeuronXA (Huang et al. 2025, "From Neurons to Semantics", ACL; no code was released): MEXA's strict rule
    (the translation's cosine strictly above every other entry of its row and its column) on the cosine matrix of
    sentence neuron states.

    Inputs are ``mlp_gate`` captures pooled ``"nas"`` (NASCA: each neuron's binary state ``> 0`` averaged over
    the tokens with MEXA's position weights ``t / sum(1..T)``) or ``"nav"`` (NAVCA: the same over ``|value|``).
    The neuron is the FFN activation function's output (``act_fn(gate_proj x)`` in gated FFNs, ``mlp_gate``):
    its sign is the neuron's firing (SiLU and GELU are > 0 exactly where their input is), as language-neuron
    work (LAPE) reads it; gate x up (the down projection's input, ``mlp_act``) is also signed by the up
    projection, so ``> 0`` there is not the neuron firing. The paper reports the mean over layers of this
    per-layer score, with English as the pivot.
    """
    check_pair(pivot_states, other_states, "neuronxa")
    hits = _strict_hits(cosine_matrix(pivot_states, other_states))
    return hits if per_sentence else _mean(hits)


def neuron_overlap(
    pivot_states: Float[Tensor, "n neurons"],
    other_states: Float[Tensor, "n neurons"],
    *,
    binary: bool = True,
    threshold: float = 0.5,
    per_sentence: bool = False,
) -> float | Float[Tensor, "n"]:
    """Majority-active neuron overlap (not NeuronXA: see :func:`neuronxa`).

    Inputs are, per sentence, the fraction of its tokens on which each FFN neuron (``mlp_gate``) is > 0 (pooling
    ``"active"``: uniform over tokens). With ``binary`` a neuron is on for a sentence when that fraction is
    > ``threshold``, and a translation pair scores the Jaccard index of the two on-sets; otherwise the cosine
    of the two fraction vectors. The score is the mean over translation pairs.
    """
    check_pair(pivot_states, other_states, "neuron_overlap", minimum=1)
    overlap = _state_similarity(pivot_states, other_states, binary, threshold).diagonal()
    return overlap if per_sentence else _mean(overlap)


def neuron_overlap_retrieval(
    pivot_states: Float[Tensor, "n neurons"],
    other_states: Float[Tensor, "n neurons"],
    *,
    binary: bool = True,
    threshold: float = 0.5,
    per_sentence: bool = False,
) -> float | Bool[Tensor, "n"]:
    """MEXA's strict rule applied to the :func:`neuron_overlap` similarity (Jaccard of majority-active neurons)
    of every pivot sentence with every other sentence (not NeuronXA: see :func:`neuronxa`)."""
    check_pair(pivot_states, other_states, "neuron_overlap_retrieval")
    hits = _strict_hits(_state_similarity(pivot_states, other_states, binary, threshold))
    return hits if per_sentence else _mean(hits)


def _gap(pivot: Tensor, other: Tensor) -> Float[Tensor, "n"]:
    return matched_random_gap(pivot, other, per_sentence=True)["gap"]


# name -> fn(pivot, other): per-sentence scores whose mean is the metric, or a float.
PAIR_METRICS: dict[str, Callable[[Tensor, Tensor], float | Tensor]] = {
    "mexa": partial(mexa, per_sentence=True),
    "retrieval_top1": partial(retrieval_top1, per_sentence=True),
    "retrieval_top1_reverse": partial(retrieval_top1_reverse, per_sentence=True),
    "matched_random_gap": _gap,
    "cka": linear_cka,
}
# name -> fn({language: matrix}): per-sentence scores of each language, from one pool of all languages.
POOL_METRICS: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {"strong_map": strong_alignment_ap}
# Like PAIR_METRICS, over neuron states (an mlp_gate store pooled as NEURON_POOLINGS says), not activations.
NEURON_METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "nasca": partial(neuronxa, per_sentence=True),
    "navca": partial(neuronxa, per_sentence=True),
    "neuron_overlap": partial(neuron_overlap, per_sentence=True),
    "neuron_overlap_retrieval": partial(neuron_overlap_retrieval, per_sentence=True),
}
