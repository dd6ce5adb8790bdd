"""Every alignment metric, per layer and language against a pivot, as one tidy table (``layer, language,
metric, value`` plus ``ci_low, ci_high`` with bootstrap intervals)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from torch import Tensor

from probes.analysis.activations import Activations, ActivationsError
from probes.analysis.alignment import ALL_METRICS, NEURON_METRICS, NEURON_POOLINGS, PAIR_METRICS, POOL_METRICS
from probes.analysis.bootstrap import bootstrap_ci
from probes.analysis.langid import language_id_scores
from probes.analysis.alignment import MetricError

COLUMNS = ["layer", "language", "metric", "value"]


def metric_names(pooling: str | None, metrics: str | Sequence[str]) -> tuple[str, ...]:
    """The metric names ``metrics`` asks for (``'all'`` expands) on activations pooled with ``pooling``."""
    activity = pooling in NEURON_POOLINGS
    available = NEURON_POOLINGS[pooling] if activity else ALL_METRICS
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    names = available if "all" in metrics else metrics
    unknown = [name for name in names if name not in available]
    if unknown:
        hint = "" if activity else " (neuron metrics need mlp_gate captured with pooling 'nas', 'nav' or 'active')"
        raise MetricError(f"unknown metrics {unknown}; available: {', '.join(available)}, or 'all'{hint}")
    return names


def measure(
    activations: Activations,
    *,
    pivot: str = "eng",
    metrics: str | Sequence[str] = ("retrieval_top1", "mexa"),
    component: str | None = None,
    ci: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric, per layer of ``component`` and per language against ``pivot``, as a tidy table.

    ``component`` defaults to ``hidden`` when the activations hold it (a capture with MEXA's defaults), else
    ``resid``.

    ``metrics`` names from :data:`ALL_METRICS`, or ``'all'``; on ``mlp_gate`` neuron states (pooled ``'nas'``,
    ``'nav'`` or ``'active'``) the names :data:`probes.analysis.alignment.NEURON_POOLINGS` gives for the
    pooling (NeuronXA's ``nasca``, ``navca``; the majority-active ``neuron_overlap``,
    ``neuron_overlap_retrieval``). ``strong_map`` pools every language at that
    layer and reports the mAP over each language's queries. ``matched_random_gap`` reports the gap.
    ``langid_acc`` is the cross-validated accuracy of a language-ID probe over all languages (``language`` =
    ``'all'``). With ``ci`` the table adds ``ci_low, ci_high``, from a bootstrap over sentences.
    """
    if component is None:
        component = "hidden" if any(site.component == "hidden" for site in activations.sites) else "resid"
    names = metric_names(activations.pooling, metrics)
    if pivot not in activations.languages:
        raise ActivationsError(
            f"pivot language {pivot!r} is not in {activations.where()}; it has {', '.join(activations.languages)}"
        )
    pair_metrics = NEURON_METRICS if activations.pooling in NEURON_POOLINGS else PAIR_METRICS
    rows = []
    for layer, by_language in activations.by_layer(component):
        matrices = {language: matrix.flatten(1) for language, matrix in by_language.items()}
        pooled = {name: POOL_METRICS[name](matrices) for name in names if name in POOL_METRICS}
        for language in matrices:
            if language == pivot:
                continue
            for name in names:
                if name == "langid_acc":
                    continue
                if name in pooled:
                    fn, args = (lambda scores: scores), (pooled[name][language],)
                else:
                    fn, args = pair_metrics[name], (matrices[pivot], matrices[language])
                result = fn(*args)
                row = (layer, language, name, float(result.double().mean()) if isinstance(result, Tensor) else result)
                if ci:
                    row += bootstrap_ci(fn, *args, n_boot=n_boot, level=level, seed=seed)
                rows.append(row)
        if "langid_acc" in names:
            accuracy, _ = language_id_scores(matrices, where=f"{component}.{layer}")
            rows.append((layer, "all", "langid_acc", accuracy) + ((None, None) if ci else ()))
    return pd.DataFrame(rows, columns=COLUMNS + (["ci_low", "ci_high"] if ci else []))
