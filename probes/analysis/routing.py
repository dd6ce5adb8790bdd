"""Routing metrics and language experts for MoE models: pure functions, tidy tables, figures.

Inputs are per-sentence routing matrices by layer and language, ``{layer: {language: (sentences, experts)}}``,
from mean-pooled ``router`` activations or from traces (:func:`router_matrices`), sentences aligned across
languages.

- :func:`routing_divergence` (Bandarkar et al., ``routing_analysis/analysis_helpers.py``): per layer and
  language, the mean over parallel sentences of the Jensen-Shannon *divergence* between the language's and
  the pivot's expert importance (scipy's ``jensenshannon`` distance squared, natural log: 0 to ln 2), and the
  entropy-normalised variant as the released code computes it: each sentence's divergence over
  ``log E - `` the mean entropy of that sentence's two importance vectors (the bound clamped at 1e-6), then
  the mean over sentences.
- Expert importance (:func:`measure_routing`'s ``importance``): ``weight``, the released code's default
  (``calculate_total_actual_weight_per_sequence``: per token the top-k probabilities renormalised to sum 1,
  zero elsewhere, averaged over the sentence's tokens), or ``prob``, the token mean of the softmax over all
  experts (the paper's description; marked deprecated in the released code).
- :func:`expert_set_overlap`: Jaccard overlap of each sentence's ``k`` most important experts with its
  translation's (token positions do not align across languages, so sets are compared per sentence).
- :func:`expert_usage`, :func:`language_experts`, :func:`universal_experts`: how often each expert is
  selected per language, the experts specific to a language (risk difference or LAPE-style entropy) and
  the experts the pivot uses that every language shares.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.spatial.distance import jensenshannon
from torch import Tensor

from probes.analysis.activations import Activations
from probes.choices import IMPORTANCE
from probes.analysis.bootstrap import bootstrap_ci
from probes.errors import XlalignError


class RoutingError(XlalignError):
    """Activations, traces or options the routing metrics cannot use: no router sites, a missing pivot, an
    unknown channel or method."""


# The channels of a ``router`` site (probes.model.moe.ROUTER_CHANNELS; restated: analysis never imports model).
ROUTER_CHANNELS = ("prob", "weight", "selected")

Matrices = Mapping[int, Mapping[str, Float[Tensor, "n experts"]]]


def router_matrices(
    source: Activations | Mapping[str, object], channel: str = "prob", languages: Sequence[str] | None = None
) -> dict[int, dict[str, Float[Tensor, "n experts"]]]:
    """Per-sentence routing by layer and language from mean-pooled ``router`` activations (or a store), or from
    ``{language: RouterTrace}``.

    ``channel``: ``prob`` (expert importance), ``weight`` (the top-k renormalised "actual weight") or
    ``selected`` (fraction of tokens routed to each expert).
    """
    if channel not in ROUTER_CHANNELS:
        raise RoutingError(f"unknown router channel {channel!r}; choose one of {', '.join(ROUTER_CHANNELS)}")
    index = ROUTER_CHANNELS.index(channel)
    if isinstance(source, Activations):
        if source.pooling != "mean":
            raise RoutingError(
                f"{source.where()}: routing metrics need mean-pooled activations, not {source.pooling!r}"
            )
        if not source.layers("router"):
            raise RoutingError(f"{source.where()} has no router sites; capture with sites router.LAYER")
        return {
            layer: {lang: matrix[:, index] for lang, matrix in by_lang.items()}
            for layer, by_lang in source.by_layer("router", languages)
        }
    langs = list(languages or source)
    layers = source[langs[0]].layers
    return {layer: {lang: source[lang].pooled(layer)[:, index] for lang in langs} for layer in layers}


def jsd(p: Float[Tensor, "n experts"], q: Float[Tensor, "n experts"]) -> Float[Tensor, " n"]:
    """Row-wise Jensen-Shannon divergence (scipy's distance squared, natural log; 0 to ln 2)."""
    distance = jensenshannon(p.double().numpy(), q.double().numpy(), axis=1)
    return torch.from_numpy(np.square(distance))


def entropy(p: Float[Tensor, "n experts"]) -> Float[Tensor, " n"]:
    """Row-wise Shannon entropy in nats."""
    p = p.double()
    return -(p * p.clamp(min=1e-300).log()).sum(dim=-1)


def normalised_jsd(pivot: Float[Tensor, "n experts"], other: Float[Tensor, "n experts"]) -> Float[Tensor, " n"]:
    """Per sentence, the divergence over ``log E`` minus the mean entropy of the sentence's two rows (clamped
    at 1e-6, as in Bandarkar et al.'s ``calculate_entropy_normalized_jsd``)."""
    spread = math.log(pivot.shape[-1]) - 0.5 * (entropy(pivot) + entropy(other))
    return jsd(pivot, other) / spread.clamp(min=1e-6)


def set_overlap(pivot: Float[Tensor, "n experts"], other: Float[Tensor, "n experts"], k: int) -> Float[Tensor, " n"]:
    """Per sentence, the Jaccard overlap of the ``k`` largest entries of both rows."""
    a = torch.zeros_like(pivot, dtype=torch.bool).scatter_(1, pivot.topk(k, dim=1).indices, True)
    b = torch.zeros_like(other, dtype=torch.bool).scatter_(1, other.topk(k, dim=1).indices, True)
    return (a & b).sum(dim=1).double() / (a | b).sum(dim=1).double()


def _pairs(matrices: Matrices, pivot: str):
    for layer in sorted(matrices):
        by_lang = matrices[layer]
        if pivot not in by_lang:
            raise RoutingError(f"router.{layer}: pivot {pivot!r} missing; languages: {', '.join(by_lang)}")
        for lang, other in by_lang.items():
            if lang == pivot:
                continue
            if other.shape != by_lang[pivot].shape:
                raise RoutingError(
                    f"router.{layer}: {lang} has shape {tuple(other.shape)}, pivot {pivot} "
                    f"{tuple(by_lang[pivot].shape)}; routing metrics need the same parallel sentences"
                )
            yield layer, lang, by_lang[pivot], other


def _table(rows: list[dict], ci: bool) -> pd.DataFrame:
    columns = ["layer", "language", "metric", "value"] + (["ci_low", "ci_high"] if ci else [])
    return pd.DataFrame(rows, columns=columns)


def routing_divergence(
    importance: Matrices,
    pivot: str = "eng",
    *,
    ci: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per layer and language: ``jsd`` (mean divergence from the pivot) and ``jsd_norm`` (entropy-normalised).

    ``ci`` adds percentile bootstrap intervals over sentences (:func:`probes.analysis.bootstrap.bootstrap_ci`).
    """
    rows = []
    for layer, lang, ref, other in _pairs(importance, pivot):
        for metric, fn in (("jsd", jsd), ("jsd_norm", normalised_jsd)):
            value = fn(ref, other)
            row = dict(layer=layer, language=lang, metric=metric, value=float(torch.as_tensor(value).mean()))
            if ci:
                row["ci_low"], row["ci_high"] = bootstrap_ci(fn, ref, other, n_boot=n_boot, level=level, seed=seed)
            rows.append(row)
    return _table(rows, ci)


def expert_set_overlap(
    importance: Matrices, pivot: str = "eng", *, k: int, ci: bool = False, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per layer and language: mean Jaccard overlap (``topk_jaccard``) of each sentence's ``k`` most important
    experts with those of its pivot translation."""
    rows = []
    for layer, lang, ref, other in _pairs(importance, pivot):
        scores = set_overlap(ref, other, k)
        row = dict(layer=layer, language=lang, metric="topk_jaccard", value=float(scores.mean()))
        if ci:
            per_sentence = partial(set_overlap, k=k)
            row["ci_low"], row["ci_high"] = bootstrap_ci(per_sentence, ref, other, n_boot=n_boot, seed=seed)
        rows.append(row)
    return _table(rows, ci)


def measure_routing(
    activations: Activations,
    pivot: str = "eng",
    *,
    k: int = 2,
    importance: str = "weight",
    ci: bool = False,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """The routing metrics of mean-pooled ``router`` activations, per layer and language: ``jsd``, ``jsd_norm``
    and ``topk_jaccard`` (the ``k`` most important experts) of the expert ``importance`` (``weight``: the
    released code's total actual weight, the default; ``prob``: the softmax mean), as one tidy table."""
    if importance not in IMPORTANCE:
        raise RoutingError(f"unknown expert importance {importance!r}; choose one of {', '.join(IMPORTANCE)}")
    importance = router_matrices(activations, importance)
    return pd.concat(
        [
            routing_divergence(importance, pivot, ci=ci, n_boot=n_boot),
            expert_set_overlap(importance, pivot, k=k, ci=ci, n_boot=n_boot),
        ],
        ignore_index=True,
    )


def expert_usage(usage: Matrices) -> pd.DataFrame:
    """Per layer, language and expert: the mean over sentences of a ``selected`` (or other) router channel.

    Columns ``layer, language, expert, metric, value`` with ``metric = 'usage'``.
    """
    rows = [
        dict(layer=layer, language=lang, expert=expert, metric="usage", value=float(value))
        for layer in sorted(usage)
        for lang, matrix in usage[layer].items()
        for expert, value in enumerate(matrix.double().mean(dim=0))
    ]
    return pd.DataFrame(rows, columns=["layer", "language", "expert", "metric", "value"])


def _usage_cube(usage: pd.DataFrame, layer: int) -> pd.DataFrame:
    """languages x experts usage at ``layer``."""
    part = usage[usage["layer"] == layer]
    return part.pivot(index="language", columns="expert", values="value").sort_index()


def language_experts(
    usage: pd.DataFrame,
    *,
    method: str = "risk_difference",
    threshold: float = 0.1,
    fraction: float = 0.1,
    quantile: float = 0.95,
) -> pd.DataFrame:
    """Experts specific to a language, as rows ``layer, expert, language, score``.

    ``risk_difference``: the language's usage minus the mean usage of the other languages is at least
    ``threshold`` (score: that difference). ``entropy`` (LAPE, Tang et al. 2024, on experts): normalise each
    expert's usage over languages and take its entropy; among experts whose usage in some language exceeds
    the ``quantile`` of all usage values, keep the lowest-entropy ``fraction`` (over all layers) and assign
    each to every language above that bar (score: the entropy).
    """
    rows = []
    if method == "risk_difference":
        for layer in sorted(usage["layer"].unique()):
            cube = _usage_cube(usage, layer)
            if len(cube) < 2:
                raise RoutingError("language_experts needs the usage of at least two languages")
            others = (cube.sum(axis=0) - cube) / (len(cube) - 1)
            difference = cube - others
            for lang, expert in zip(*np.nonzero(difference.to_numpy() >= threshold)):
                rows.append(
                    dict(
                        layer=layer,
                        expert=int(cube.columns[expert]),
                        language=cube.index[lang],
                        score=float(difference.iat[lang, expert]),
                    )
                )
    elif method == "entropy":
        bar = usage["value"].quantile(quantile)
        candidates = []
        for layer in sorted(usage["layer"].unique()):
            cube = _usage_cube(usage, layer)
            share = cube / cube.sum(axis=0).replace(0, np.nan)
            ent = -(share * np.log(share.where(share > 0))).sum(axis=0)
            for expert in cube.columns[(cube > bar).any(axis=0)]:
                candidates.append((float(ent[expert]), layer, expert, list(cube.index[cube[expert] > bar])))
        candidates.sort()
        for ent, layer, expert, langs in candidates[: max(1, round(fraction * len(candidates)))] if candidates else []:
            rows += [dict(layer=layer, expert=int(expert), language=lang, score=ent) for lang in langs]
    else:
        raise RoutingError(f"unknown method {method!r}; use 'risk_difference' or 'entropy'")
    return pd.DataFrame(rows, columns=["layer", "expert", "language", "score"])


def universal_experts(usage: pd.DataFrame, pivot: str = "eng", *, ratio: float = 0.5) -> pd.DataFrame:
    """Experts the pivot uses more than uniformly that every language shares: rows ``layer, expert, score``.

    Kept when the pivot's usage exceeds the uniform rate (total usage / experts) and every language uses
    the expert at least ``ratio`` times as often as the pivot; score: the smallest such ratio.
    """
    rows = []
    for layer in sorted(usage["layer"].unique()):
        cube = _usage_cube(usage, layer)
        if pivot not in cube.index:
            raise RoutingError(f"router.{layer}: pivot {pivot!r} missing from the usage table")
        ref = cube.loc[pivot]
        uniform = ref.sum() / len(ref)
        shared = (cube / ref.replace(0, np.nan)).min(axis=0)
        for expert in cube.columns[(ref > uniform) & (shared >= ratio)]:
            rows.append(dict(layer=layer, expert=int(expert), score=float(shared[expert])))
    return pd.DataFrame(rows, columns=["layer", "expert", "score"])


def risk_difference(
    probs_1: Float[Tensor, "tokens experts"], probs_2: Float[Tensor, "tokens experts"], k: int
) -> Float[Tensor, " experts"]:
    """SteerMoE's risk difference at one layer (JACKPURCELL/SteerMoE ``demo.py: calc_risk_diff``): per expert, the
    fraction of behaviour-1 tokens whose top ``k`` router probabilities include it, minus that fraction for
    behaviour-2 tokens. Positive: the expert is used more for behaviour 1."""
    if (
        probs_1.dim() != 2
        or probs_2.dim() != 2
        or probs_1.shape[1] != probs_2.shape[1]
        or not 0 < k <= probs_1.shape[1]
    ):
        raise RoutingError(
            f"risk difference needs (tokens, experts) probabilities of the same experts and 0 < k <= "
            f"experts; got {tuple(probs_1.shape)}, {tuple(probs_2.shape)}, k={k}"
        )
    if not len(probs_1) or not len(probs_2):
        raise RoutingError("risk difference needs tokens of both behaviours")

    def activated(probs: Tensor) -> Tensor:
        chosen = torch.zeros_like(probs, dtype=torch.float64)
        return chosen.scatter_(1, probs.topk(k, dim=1).indices, 1.0).mean(0)

    return activated(probs_1) - activated(probs_2)
