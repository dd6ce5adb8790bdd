"""LAPE: language activation probability entropy (Tang et al. 2024; code RUCAIBox/Language-Specific-Neurons).

sklearn-style (``__init__`` stores hyperparameters, ``fit`` returns self, learned state ends in ``_``)::

    stats = collect_stats(model, tokenizer, corpus, [Site(layer, "mlp_gate") for layer in range(1, 19)], bins=0)
    lape = LAPE().fit(stats)
    lape.neurons_.count_per_layer()                                   # layer, language, n_neurons
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probes.analysis.activations import non_finite
from probes.artifacts.neuron_set import NeuronError, NeuronSet


class LAPE:
    """Language activation probability entropy (Tang et al. 2024; code RUCAIBox/Language-Specific-Neurons).

    Input: p[layer, neuron, language], the fraction of a language's (non-pad) tokens with ``mlp_gate > 0``.
    As the released ``identify.py``:

    1. ``bar`` = the ``filter_quantile`` order statistic of all p values (over layers, neurons and languages):
       ``kthvalue(round(n * filter_quantile))``, i.e. the ``round(n * q)``-th smallest, not an interpolated
       percentile.
    2. Normalise p over languages to a distribution (all-zero rows give zeros), entropy with 0 log 0 = 0.
    3. Neurons where no language has ``p > bar`` (strictly) are dismissed.
    4. Select the ``round(top_fraction * n_neurons)`` lowest-entropy neurons, ``n_neurons`` counting ALL
       neurons (every layer); the selection is made among the neurons kept in step 3, so fewer are selected
       when fewer pass the filter (the released code then picks dismissed neurons, which step 5 drops).
    5. Assign each selected neuron to every language whose ``p > bar``.

    Deviations: ties in entropy are broken by (layer, neuron) order (``torch.topk``'s order is unspecified);
    computed in float64. ``top_fraction``: the paper's text says 1%; the two versions of ``identify.py`` in
    the repository's history use ``top_rate`` 0.01 and 0.05 — pass ``top_fraction=0.05`` for the latter.
    ``bar_quantile`` (default: ``filter_quantile``, as the code's ``activation_bar_ratio``) sets step 5's bar;
    dismissed neurons are never selected, even when a lower ``bar_quantile`` would let the released code
    assign them. Tokens are those of the corpus sentences without BOS (statistics never count it, as the
    released code, which counts fixed-length chunks of concatenated Wikipedia token ids, has none); each
    sentence is still run with its BOS, where the released code's chunks start mid-text.

    Learned: ``probabilities_`` (layers, neurons, languages), ``entropy_`` (layers, neurons), ``bar_``,
    ``assign_bar_``, ``selected_`` (bool, layers x neurons), ``layers_``, ``languages_``, ``neurons_``
    (:class:`NeuronSet` with values ``probability`` and ``entropy``).
    """

    component = "mlp_gate"

    def __init__(self, top_fraction: float = 0.01, filter_quantile: float = 0.95, bar_quantile: float | None = None):
        self.top_fraction = top_fraction
        self.filter_quantile = filter_quantile
        self.bar_quantile = bar_quantile

    def fit(
        self,
        stats,
        *,
        layers: Sequence[int] | None = None,
        languages: Sequence[str] | None = None,
        model: Mapping | None = None,
    ) -> LAPE:
        """Fit on :class:`probes.capture.NeuronStats` (its ``mlp_gate`` sites; per token) or on an array p (layers,
        neurons, languages); for an array pass ``languages`` (and ``layers``, default 1..L, and ``model``, the
        identity of the model the probabilities came from)."""
        if not (0 < self.top_fraction <= 1 and 0 < self.filter_quantile <= 1):
            raise NeuronError(
                f"top_fraction and filter_quantile must be in (0, 1], got {self.top_fraction}, {self.filter_quantile}"
            )
        if hasattr(stats, "probabilities") and hasattr(stats, "per"):  # NeuronStats (find never imports capture)
            if stats.per != "token":
                raise NeuronError(
                    f"LAPE counts tokens: got statistics per {stats.per!r}; collect them with per='token'"
                )
            sites = [site for site in stats.sites if site.component == self.component]
            if layers is not None:
                missing = sorted(set(layers) - {site.layer for site in sites})
                if missing:
                    raise NeuronError(f"the statistics hold no {self.component} sites at layers {missing}")
                sites = [site for site in sites if site.layer in layers]
            if not sites:
                raise NeuronError(
                    f"the statistics hold no {self.component} sites "
                    f"(have {', '.join(map(str, stats.sites)) or 'none'}); "
                    f"collect them with collect_stats(..., [Site(layer, '{self.component}') for layer in 1..L])"
                )
            languages = list(languages) if languages is not None else stats.languages
            probabilities = stats.probabilities(sites, languages)
            layers = [site.layer for site in sites]
            model = model if model is not None else stats.model
        else:
            probabilities = torch.as_tensor(np.asarray(stats), dtype=torch.float64)
            if probabilities.dim() != 3:
                raise NeuronError(f"expected p of shape (layers, neurons, languages), got {tuple(probabilities.shape)}")
            if languages is None or len(languages) != probabilities.shape[2]:
                raise NeuronError(f"pass languages: {probabilities.shape[2]} codes, one per last-axis entry of p")
            layers = list(layers) if layers is not None else list(range(1, probabilities.shape[0] + 1))
            if len(layers) != probabilities.shape[0]:
                raise NeuronError(f"{len(layers)} layers given for p with {probabilities.shape[0]} layers")
            bad = (~torch.isfinite(probabilities)).nonzero()
            if len(bad):  # the first (layer, language) holding inf or NaN
                index, _, column = bad[0].tolist()
                raise non_finite(f"{self.component}.{layers[index]}", languages[column], where="LAPE's p")
        if len(languages) < 2:
            raise NeuronError(f"LAPE compares languages: need at least 2, got {list(languages)}")
        if not ((probabilities >= 0) & (probabilities <= 1)).all():
            raise NeuronError("activation probabilities must lie in [0, 1]")

        p = probabilities.double()
        flat = p.flatten()
        bar = _kth(flat, self.filter_quantile)
        assign_bar = bar if self.bar_quantile is None else _kth(flat, self.bar_quantile)
        entropy = _entropy(p)
        passes = (p > bar).any(dim=-1)
        budget = round(self.top_fraction * entropy.numel())
        ranked = torch.where(passes, entropy, math.inf).flatten()
        order = torch.sort(ranked, stable=True).indices[:budget]
        order = order[torch.isfinite(ranked[order])]
        selected = torch.zeros(entropy.numel(), dtype=torch.bool)
        selected[order] = True
        selected = selected.view_as(entropy)

        units, values = {}, {}
        layer_ids = torch.tensor(layers, dtype=torch.long)
        for column, language in enumerate(languages):
            keep = selected & (p[..., column] > assign_bar)
            where = keep.nonzero()  # row-major: sorted by layer, then neuron
            units[language] = torch.stack([layer_ids[where[:, 0]], where[:, 1]], dim=1)
            values[language] = {
                "probability": p[where[:, 0], where[:, 1], column],
                "entropy": entropy[where[:, 0], where[:, 1]],
            }
        self.probabilities_ = p
        self.entropy_ = entropy
        self.bar_ = bar
        self.assign_bar_ = assign_bar
        self.selected_ = selected
        self.layers_ = list(layers)
        self.languages_ = list(languages)
        self.neurons_ = NeuronSet(
            self.component,
            units,
            values,
            dict(model or {}),
            "LAPE",
            {
                "top_fraction": self.top_fraction,
                "filter_quantile": self.filter_quantile,
                "bar_quantile": self.bar_quantile,
                "layers": self.layers_,
            },
        )
        return self


def _kth(flat: Tensor, fraction: float) -> float:
    """``flat.kthvalue(round(len * fraction))`` as in identify.py (1-based k; at least 1)."""
    k = min(max(round(flat.numel() * fraction), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def _entropy(p: Float[Tensor, "... languages"]) -> Float[Tensor, "..."]:
    total = p.sum(dim=-1, keepdim=True)
    normed = torch.where(total > 0, p / total.clamp(min=torch.finfo(p.dtype).tiny), 0.0)
    logs = torch.where(normed > 0, normed.clamp(min=torch.finfo(p.dtype).tiny).log(), 0.0)
    return -(normed * logs).sum(dim=-1)
