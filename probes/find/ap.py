"""Expert units by average precision (Suau et al. 2022, code apple/ml-selfcond; Kojima et al. 2024).

acts = capture_corpus(model, tokenizer, corpus, [Site(layer, "mlp_act") for layer in range(1, 19)])
experts = APExperts(k=1000).fit(acts)
experts.neurons_.save("experts.safetensors")
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probes.analysis.activations import Activations
from probes.artifacts.neuron_set import NeuronError, NeuronSet


def average_precision(
    responses: Float[Tensor, "n units"], positive: Sequence[bool] | Tensor
) -> Float[Tensor, " units"]:
    """``sklearn.metrics.average_precision_score(positive, responses[:, u])`` for every unit u at once.

    Same definition (step-wise precision-recall area over the distinct thresholds, tied responses form one
    step), computed in float64 with one sort per unit.
    """
    scores = torch.as_tensor(responses).double()
    labels = torch.as_tensor(positive, dtype=torch.bool).flatten()
    if scores.dim() != 2 or scores.shape[0] != labels.shape[0]:
        raise NeuronError(f"responses {tuple(scores.shape)} and labels ({labels.shape[0]},) do not align")
    if not torch.isfinite(scores).all():
        raise NeuronError("responses contain NaN or inf")
    n_positive = int(labels.sum())
    if n_positive == 0:
        raise NeuronError("average precision needs at least one positive example")
    ordered, order = torch.sort(scores, dim=0, descending=True, stable=True)
    return _ap_sorted(ordered, order, labels, n_positive)


def _ap_sorted(ordered: Tensor, order: Tensor, labels: Tensor, n_positive: int) -> Tensor:
    n = ordered.shape[0]
    last = torch.ones_like(ordered, dtype=torch.bool)  # last row of each group of tied responses
    last[:-1] = ordered[:-1] != ordered[1:]
    hits = labels[order].double()
    true_positives = hits.cumsum(dim=0)
    precision = true_positives / torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    at_steps = torch.where(last, true_positives, 0.0)
    before = torch.cat([torch.zeros_like(at_steps[:1]), at_steps.cummax(dim=0).values[:-1]])
    return torch.where(last, (true_positives - before) * precision, 0.0).sum(dim=0) / n_positive


class APExperts:
    """Expert units by average precision (Suau et al. 2022, code apple/ml-selfcond; Kojima et al. 2024).

    A unit's expertise for language l is ``average_precision(labels == l, response)`` over pooled
    per-sentence responses, language-l sentences positive and all others negative. Per language the ``k``
    units with the highest AP over all given layers (and components) are kept, and the ``bottom_k`` with the
    lowest (Kojima's "bottom 1000"), each with ``ap``, ``on_p50`` / ``on_p90`` (median and 90th percentile of
    the response on positives, numpy's linear interpolation) and ``off_mean`` (mean on negatives).
    ``pooling`` is the sentence pooling the activations must have been captured with (``mean`` as Kojima;
    ``max`` as Suau).

    Kojima et al. rank the outputs of every linear projection of every block together (their ``layer_types``
    in ``selfcond/models.py``; our :data:`probes.model.LINEAR_COMPONENTS`) and force the top 1000 and bottom
    1000 (``scripts/make_limited_expert.py``): ``APExperts(k=1000, bottom_k=1000).fit(acts, components)``.

    Deviations: ``k`` and ``bottom_k`` are capped at the number of units (bottom-k chosen among units not
    in the top-k: the same as the reference whenever ``k + bottom_k`` does not exceed the units); ties in AP are
    broken by (component as given, layer, neuron) order. Kojima samples 500 positives and 2500 negatives per
    language; here every given sentence is used — pass a corpus subset to match.

    Learned: ``ap_`` ({Site: (languages, width)}), ``languages_``, ``sites_``, ``neuron_sets_`` ({component:
    NeuronSet}, each unit listed in the joint ranking's order) and, for one component, ``neurons_``.
    """

    def __init__(self, k: int = 1000, pooling: str = "mean", bottom_k: int = 0):
        self.k = k
        self.pooling = pooling
        self.bottom_k = bottom_k

    @property
    def neurons_(self) -> NeuronSet:
        """The NeuronSet of a fit over one component (several: :attr:`neuron_sets_`, one per component)."""
        if len(self.neuron_sets_) != 1:
            raise NeuronError(
                f"ranked over {', '.join(self.neuron_sets_)} together: use neuron_sets_, one NeuronSet per component"
            )
        return next(iter(self.neuron_sets_.values()))

    def fit(
        self,
        activations: Activations,
        component: str | Sequence[str] = "mlp_act",
        languages: Sequence[str] | None = None,
    ) -> APExperts:
        """Rank every unit of ``component`` (one or several, all their layers in ``activations``) for each of
        ``languages`` (default: all): the sentences of a language are its positives, every other language's the
        negatives."""
        if self.k < 0 or self.bottom_k < 0 or self.k + self.bottom_k == 0:
            raise NeuronError(f"k and bottom_k must be >= 0 and not both 0, got k={self.k}, bottom_k={self.bottom_k}")
        if activations.pooling not in (None, self.pooling):
            raise NeuronError(
                f"APExperts(pooling={self.pooling!r}) was given activations pooled with {activations.pooling!r}"
            )
        components = [component] if isinstance(component, str) else list(dict.fromkeys(component))
        languages = list(languages) if languages is not None else activations.languages
        if len(languages) < 2:
            raise NeuronError(f"AP experts compare languages: need sentences of 2 languages at least, got {languages}")
        labels = np.repeat(languages, len(activations))
        masks = {language: torch.from_numpy(labels == language) for language in languages}
        responses, ap = {}, {}
        site_named = {(site.component, site.layer): site for site in activations.sites}
        for name in components:
            for layer, by_language in activations.by_layer(name, languages):
                site = site_named[name, layer]
                values = torch.cat([by_language[language].flatten(1) for language in languages]).double()
                ordered, order = torch.sort(values, dim=0, descending=True, stable=True)
                ap[site] = torch.stack(
                    [_ap_sorted(ordered, order, masks[lang], int(masks[lang].sum())) for lang in languages]
                )
                responses[site] = values
        sites = list(ap)  # components as given, then layers
        site_of = torch.cat(
            [torch.full((ap[site].shape[1],), index, dtype=torch.long) for index, site in enumerate(sites)]
        )
        neuron_of = torch.cat([torch.arange(ap[site].shape[1]) for site in sites])
        every = torch.cat([ap[site] for site in sites], dim=1)  # (languages, all units), in that order
        k = min(self.k, every.shape[1])
        bottom_k = min(self.bottom_k, every.shape[1] - k)
        units = {name: {} for name in components}
        values = {name: {} for name in components}
        for row, language in enumerate(languages):
            scores = every[row]
            top = torch.sort(-scores, stable=True).indices[:k]
            chosen = top
            if bottom_k:
                rest = torch.ones_like(scores, dtype=torch.bool)
                rest[top] = False
                candidates = rest.nonzero().flatten()
                chosen = torch.cat([top, candidates[torch.sort(scores[candidates], stable=True).indices[:bottom_k]]])
            unit_sites, neurons = site_of[chosen], neuron_of[chosen]
            named = {
                "ap": scores[chosen],
                **_unit_values([responses[site] for site in sites], unit_sites, neurons, masks[language]),
            }
            for name in components:
                mine = torch.tensor([sites[int(index)].component == name for index in unit_sites], dtype=torch.bool)
                layers = torch.tensor([sites[int(index)].layer for index in unit_sites[mine]], dtype=torch.long)
                units[name][language] = torch.stack([layers, neurons[mine]], dim=1)
                values[name][language] = {key: value[mine] for key, value in named.items()}
        self.ap_ = ap
        self.languages_ = languages
        self.sites_ = sites
        params = {
            "k": self.k,
            "bottom_k": self.bottom_k,
            "pooling": self.pooling,
            "n_sentences": {language: int(masks[language].sum()) for language in languages},
        }
        if len(components) > 1:
            params["ranked_with"] = components
        self.neuron_sets_ = {
            name: NeuronSet(
                name,
                units[name],
                values[name],
                dict(activations.model),
                "APExperts",
                {**params, "layers": sorted(site.layer for site in sites if site.component == name)},
            )
            for name in components
        }
        return self


def _unit_values(responses: Sequence[Tensor], sites: Tensor, neurons: Tensor, positive: Tensor) -> dict[str, Tensor]:
    """on_p50, on_p90 (over positives) and off_mean (over negatives) of the chosen units (``sites`` index
    ``responses``)."""
    columns = torch.zeros(positive.shape[0], len(sites), dtype=torch.float64)
    for index, values in enumerate(responses):
        here = (sites == index).nonzero().flatten()
        if len(here):
            columns[:, here] = values[:, neurons[here]]
    on, off = columns[positive], columns[~positive]
    return {
        "on_p50": torch.quantile(on, 0.5, dim=0) if len(sites) else columns[0],
        "on_p90": torch.quantile(on, 0.9, dim=0) if len(sites) else columns[0],
        "off_mean": off.mean(dim=0),
    }
