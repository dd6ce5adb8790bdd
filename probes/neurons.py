"""Language-specific neurons: LAPE (Tang et al. 2024) and expert units by average precision (Suau et al. 2022,
Kojima et al. 2024). Finders follow scikit-learn (``__init__`` stores hyperparameters, ``fit`` returns self,
learned state ends in ``_``); what they find is a :class:`NeuronSet`::

    lape = LAPE().fit_from_model(model, tokenizer, corpus)            # mlp_gate, every layer
    lape.neurons_.count_per_layer()                                   # layer, language, n_neurons
    experts = APExperts(k=1000).fit_from_model(model, tokenizer, corpus, [Site(l, "mlp_act") for l in ...])
    experts.neurons_.save("experts.safetensors")
    NeuronSet.load("experts.safetensors", model=model)               # checks model identity and sizes

A unit is ``(layer, neuron)``: ``layer`` counts decoder blocks from 1 (as :class:`probes.sites.Site`),
``neuron`` indexes the last dimension of the component's tensor.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.sites import COMPONENTS, Site

KIND = "NeuronSet"


class NeuronError(ValueError):
    """Bad input to a finder, or a NeuronSet that does not fit."""


# ----------------------------------------------------------------------------------------------------------
# NeuronSet


@dataclass(frozen=True, eq=False)
class NeuronSet:
    """Units found per language at one site component, with optional per-unit values and metadata.

    ``neurons[lang]`` is a ``(n, 2)`` LongTensor of ``(layer, neuron)`` rows in the finder's order (LAPE: sorted
    by layer and neuron; AP: top-k by decreasing AP, then bottom-k by increasing AP). ``values[lang][name]``
    is a ``(n,)`` float tensor aligned with those rows (``ap``, ``on_p50``, ``on_p90``, ``off_mean``,
    ``probability``, ``entropy``, ...). ``model`` is :func:`probes.models.model_identity` of the model the set
    was found on; ``params`` the finder's hyperparameters (JSON-serialisable).
    """

    component: str
    neurons: Mapping[str, Int[Tensor, "n 2"]]
    values: Mapping[str, Mapping[str, Float[Tensor, " n"]]] = field(default_factory=dict)
    model: Mapping[str, object] = field(default_factory=dict)
    method: str = ""
    params: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise NeuronError(f"unknown component {self.component!r}; choose one of {', '.join(COMPONENTS)}")
        units: dict[str, Tensor] = {}
        for language, rows in self.neurons.items():
            rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1, 2).clone()
            if rows.numel() and (rows[:, 0].min() < 1 or rows[:, 1].min() < 0):
                raise NeuronError(
                    f"language {language!r}: units need layer >= 1 and neuron >= 0, got min layer "
                    f"{rows[:, 0].min().item()} and min neuron {rows[:, 1].min().item()}"
                )
            if torch.unique(rows, dim=0).shape[0] != rows.shape[0]:
                raise NeuronError(f"language {language!r}: a unit appears twice; units must be distinct")
            units[str(language)] = rows
        values: dict[str, Mapping[str, Tensor]] = {}
        for language, named in self.values.items():
            if language not in units:
                raise NeuronError(f"values given for language {language!r}, which has no units; have {list(units)}")
            checked = {}
            for name, value in named.items():
                value = torch.as_tensor(value).flatten().clone()
                if not value.is_floating_point():
                    value = value.double()
                if value.shape[0] != units[language].shape[0]:
                    raise NeuronError(
                        f"language {language!r}: value {name!r} has {value.shape[0]} entries for "
                        f"{units[language].shape[0]} units"
                    )
                checked[str(name)] = value
            values[language] = MappingProxyType(checked)
        values = {language: values.get(language, MappingProxyType({})) for language in units}
        object.__setattr__(self, "neurons", MappingProxyType(units))
        object.__setattr__(self, "values", MappingProxyType(values))
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.neurons)

    def __len__(self) -> int:
        """Number of (language, unit) assignments."""
        return sum(rows.shape[0] for rows in self.neurons.values())

    def __repr__(self) -> str:
        counts = " ".join(f"{language}:{rows.shape[0]}" for language, rows in self.neurons.items())
        return (
            f"NeuronSet(method={self.method!r}, component={self.component!r}, "
            f"model={self.model.get('name')!r}, units=[{counts}])"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        same_values = self.values.keys() == other.values.keys() and all(
            self.values[lang].keys() == other.values[lang].keys()
            and all(torch.equal(v, other.values[lang][name]) for name, v in self.values[lang].items())
            for lang in self.values
        )
        return (
            (self.component, self.method, dict(self.model), dict(self.params), self.languages)
            == (other.component, other.method, dict(other.model), dict(other.params), other.languages)
            and all(torch.equal(self.neurons[lang], other.neurons[lang]) for lang in self.languages)
            and same_values
        )

    __hash__ = None  # type: ignore[assignment]  # holds tensors

    def units(self, language: str) -> dict[int, Int[Tensor, " k"]]:
        """``{layer: neuron indices}`` of ``language``, layers ascending; only layers holding units."""
        if language not in self.neurons:
            raise NeuronError(f"no language {language!r} in this NeuronSet; have {', '.join(self.languages)}")
        rows = self.neurons[language]
        return {int(layer): rows[rows[:, 0] == layer, 1].clone() for layer in torch.unique(rows[:, 0]).tolist()}

    def count_per_layer(self):
        """Tidy table ``(layer, language, n_neurons)``; every layer of the model appears (zeros included)."""
        import pandas as pd

        found = [int(layer) for rows in self.neurons.values() for layer in rows[:, 0].tolist()]
        last = max([int(self.model.get("n_layers") or 0), *found, 0])
        records = []
        for language, rows in self.neurons.items():
            counts = torch.bincount(rows[:, 0], minlength=last + 1)
            records += [(layer, language, int(counts[layer])) for layer in range(1, last + 1)]
        return pd.DataFrame.from_records(records, columns=["layer", "language", "n_neurons"])

    # ---- persistence -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a safetensors artifact (kind ``'NeuronSet'``); refuses to replace a file unless ``overwrite``."""
        from probes.artifacts import save_artifact

        tensors: dict[str, Tensor] = {}
        value_names: dict[str, list[str]] = {}
        for index, language in enumerate(self.languages):
            tensors[f"units.{index}"] = self.neurons[language]
            value_names[language] = list(self.values.get(language, {}))
            for name, value in self.values.get(language, {}).items():
                tensors[f"values.{index}.{name}"] = value
        meta = {
            "model": dict(self.model),
            "component": self.component,
            "languages": list(self.languages),
            "method": self.method,
            "params": dict(self.params),
            "value_names": value_names,
        }
        return save_artifact(path, KIND, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> NeuronSet:
        """Read a saved set. With ``model``, check its identity and that every unit fits its sizes."""
        from probes.artifacts import ArtifactError, check_model, load_artifact

        tensors, meta = load_artifact(path, KIND)
        if model is not None:
            check_model(meta, model, where=str(path))
        languages = meta["languages"]
        try:
            units = {language: tensors[f"units.{index}"] for index, language in enumerate(languages)}
            values = {
                language: {name: tensors[f"values.{index}.{name}"] for name in meta["value_names"][language]}
                for index, language in enumerate(languages)
            }
        except KeyError as missing:
            raise ArtifactError(f"{path}: NeuronSet artifact lacks tensor {missing}; the file is damaged") from None
        result = cls(meta["component"], units, values, meta["model"], meta["method"], meta["params"])
        if model is not None:
            result.check_fits(model, where=str(path))
        return result

    def check_fits(self, model, *, where: str = "NeuronSet") -> None:
        """Raise if a unit's layer or neuron index does not exist in ``model`` (says which, and the sizes)."""
        from probes.artifacts import ArtifactError
        from probes.sites import n_layers, width

        layers, size = n_layers(model), width(model, self.component)
        if self.component == "head":  # head units index the flattened (heads * head_dim) output
            from probes.sites import n_heads

            size *= n_heads(model)
        for language, rows in self.neurons.items():
            if not rows.numel():
                continue
            if rows[:, 0].max() > layers:
                bad = rows[rows[:, 0].argmax()].tolist()
                raise ArtifactError(
                    f"{where}: language {language!r}, unit (layer {bad[0]}, neuron {bad[1]}): layer out of range; "
                    f"the model has {layers} layers (1..{layers})"
                )
            if rows[:, 1].max() >= size:
                bad = rows[rows[:, 1].argmax()].tolist()
                raise ArtifactError(
                    f"{where}: language {language!r}, unit (layer {bad[0]}, neuron {bad[1]}): neuron index out of "
                    f"range; {self.component} has {size} neurons per layer (0..{size - 1}) in this model"
                )


def _identity(model) -> dict:
    """A model's identity dict from a model, an identity dict, or None."""
    if model is None:
        return {}
    if isinstance(model, Mapping):
        return dict(model)
    from probes.models import model_identity

    return model_identity(model)


# ----------------------------------------------------------------------------------------------------------
# LAPE


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
    assign them. Tokens are those of the corpus sentences (BOS included unless ``exclude_bos``), where the
    released code counts fixed-length chunks of concatenated Wikipedia text.

    Learned: ``probabilities_`` (layers, neurons, languages), ``entropy_`` (layers, neurons), ``bar_``,
    ``assign_bar_``, ``selected_`` (bool, layers x neurons), ``layers_``, ``languages_``, ``neurons_``
    (:class:`NeuronSet` with values ``probability`` and ``entropy``); :meth:`fit_from_model` adds ``stats_``.
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
        model=None,
    ) -> LAPE:
        """Fit on :class:`probes.stats.NeuronStats` (its ``mlp_gate`` sites) or on an array p (layers, neurons,
        languages); for an array pass ``languages`` (and ``layers``, default 1..L, and ``model``)."""
        from probes.stats import NeuronStats

        if not (0 < self.top_fraction <= 1 and 0 < self.filter_quantile <= 1):
            raise NeuronError(
                f"top_fraction and filter_quantile must be in (0, 1], got {self.top_fraction}, {self.filter_quantile}"
            )
        if isinstance(stats, NeuronStats):
            if stats.per != "token":
                raise NeuronError(
                    f"LAPE counts tokens: got statistics per {stats.per!r}; collect them with per='token'"
                )
            sites = [site for site in stats.sites if site.component == self.component]
            if layers is not None:
                sites = [Site(layer, self.component) for layer in layers]
            if not sites:
                raise NeuronError(
                    f"the statistics hold no {self.component} sites "
                    f"(have {', '.join(map(str, stats.sites)) or 'none'}); "
                    f"collect them with collect_stats(..., [Site(l, '{self.component}') for l in 1..L])"
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
            self.component, units, values, _identity(model), "LAPE",
            {"top_fraction": self.top_fraction, "filter_quantile": self.filter_quantile,
             "bar_quantile": self.bar_quantile, "layers": self.layers_},
        )  # fmt: skip
        return self

    def fit_from_model(
        self,
        model,
        tokenizer,
        corpus,
        languages: Sequence[str] | None = None,
        *,
        layers: Sequence[int] | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        exclude_bos: bool = False,
        progress: bool = True,
    ) -> LAPE:
        """Count ``mlp_gate > 0`` per language over every non-pad token of ``corpus`` (streaming), then fit."""
        from probes.sites import n_layers
        from probes.stats import collect_stats

        layers = list(layers) if layers is not None else list(range(1, n_layers(model) + 1))
        stats = collect_stats(
            model, tokenizer, corpus, [Site(layer, self.component) for layer in layers], languages=languages,
            per="token", batch_size=batch_size, bins=0, max_length=max_length, exclude_bos=exclude_bos,
            progress=progress,
        )  # fmt: skip
        self.stats_ = stats
        return self.fit(stats, languages=languages)


def _kth(flat: Tensor, fraction: float) -> float:
    """``flat.kthvalue(round(len * fraction))`` as in identify.py (1-based k; at least 1)."""
    k = min(max(round(flat.numel() * fraction), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def _entropy(p: Float[Tensor, "... languages"]) -> Float[Tensor, "..."]:
    total = p.sum(dim=-1, keepdim=True)
    normed = torch.where(total > 0, p / total.clamp(min=torch.finfo(p.dtype).tiny), 0.0)
    logs = torch.where(normed > 0, normed.clamp(min=torch.finfo(p.dtype).tiny).log(), 0.0)
    return -(normed * logs).sum(dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Expert units by average precision


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
    units with the highest AP over all given layers are kept (and the ``bottom_k`` with the lowest, Kojima's
    "bottom 1000"), each with ``ap``, ``on_p50`` / ``on_p90`` (median and 90th percentile of the response on
    positives, numpy's linear interpolation) and ``off_mean`` (mean on negatives). ``pooling`` is the
    sentence pooling :meth:`fit_from_model` captures with (``mean`` as Kojima; ``max`` as Suau).

    Deviations: ``k`` and ``bottom_k`` are capped at the number of units (bottom-k chosen among units not
    in the top-k); ties in AP are broken by (layer, neuron) order. Kojima samples 500 positives and 2500
    negatives per language; here every given sentence is used — pass a corpus subset to match. One fit covers
    one component (Kojima rank units of several linear layers together: fit per component and compare APs).

    Learned: ``ap_`` ({layer: (languages, width)}), ``languages_``, ``layers_``, ``neurons_``.
    """

    def __init__(self, k: int = 1000, pooling: str = "mean", bottom_k: int = 0):
        self.k = k
        self.pooling = pooling
        self.bottom_k = bottom_k

    def fit(
        self,
        responses: Mapping[Site, Float[Tensor, "n width"]],
        labels: Sequence[str],
        *,
        model=None,
    ) -> APExperts:
        """``responses``: per site (all of one component, one per layer), pooled responses of n sentences;
        ``labels``: the language of each sentence. ``model``: the model (or its identity) for the NeuronSet."""
        if self.k < 0 or self.bottom_k < 0 or self.k + self.bottom_k == 0:
            raise NeuronError(f"k and bottom_k must be >= 0 and not both 0, got k={self.k}, bottom_k={self.bottom_k}")
        if not responses:
            raise NeuronError("fit needs responses at one site at least")
        sites = sorted(responses)
        components = {site.component for site in sites}
        if len(components) != 1 or len({site.layer for site in sites}) != len(sites):
            raise NeuronError(f"give one site per layer, all of one component; got {', '.join(map(str, sites))}")
        (component,) = components
        labels = [str(label) for label in labels]
        languages = list(dict.fromkeys(labels))
        if len(languages) < 2:
            raise NeuronError(f"AP experts compare languages: need sentences of 2 languages at least, got {languages}")
        label_array = np.asarray(labels)
        masks = {language: torch.from_numpy(label_array == language) for language in languages}

        ap: dict[int, Tensor] = {}
        for site in sites:  # one layer at a time bounds memory to (n, width)
            values = torch.as_tensor(responses[site]).double()
            if values.dim() != 2 or values.shape[0] != len(labels):
                raise NeuronError(
                    f"{site}: responses of shape {tuple(values.shape)} for {len(labels)} labels; expected (n, width)"
                )
            if not torch.isfinite(values).all():
                raise NeuronError(f"{site}: responses contain NaN or inf")
            ordered, order = torch.sort(values, dim=0, descending=True, stable=True)
            ap[site.layer] = torch.stack(
                [_ap_sorted(ordered, order, masks[lang], int(masks[lang].sum())) for lang in languages]
            )

        layer_of = torch.cat([torch.full((ap[s.layer].shape[1],), s.layer, dtype=torch.long) for s in sites])
        neuron_of = torch.cat([torch.arange(ap[s.layer].shape[1]) for s in sites])
        every = torch.cat([ap[s.layer] for s in sites], dim=1)  # (languages, all units), by layer then neuron
        k = min(self.k, every.shape[1])
        bottom_k = min(self.bottom_k, every.shape[1] - k)
        units, values = {}, {}
        for row, language in enumerate(languages):
            scores = every[row]
            top = torch.sort(-scores, stable=True).indices[:k]
            chosen = top
            if bottom_k:
                rest = torch.ones_like(scores, dtype=torch.bool)
                rest[top] = False
                candidates = rest.nonzero().flatten()
                chosen = torch.cat([top, candidates[torch.sort(scores[candidates], stable=True).indices[:bottom_k]]])
            layers, neurons = layer_of[chosen], neuron_of[chosen]
            units[language] = torch.stack([layers, neurons], dim=1)
            values[language] = {
                "ap": scores[chosen],
                **_unit_values(responses, sites, layers, neurons, masks[language]),
            }
        self.ap_ = ap
        self.languages_ = languages
        self.layers_ = [site.layer for site in sites]
        self.neurons_ = NeuronSet(
            component, units, values, _identity(model), "APExperts",
            {"k": self.k, "bottom_k": self.bottom_k, "pooling": self.pooling, "layers": self.layers_,
             "n_sentences": {language: int(masks[language].sum()) for language in languages}},
        )  # fmt: skip
        return self

    def fit_from_model(
        self,
        model,
        tokenizer,
        corpus,
        sites: Sequence[Site],
        languages: Sequence[str] | None = None,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        exclude_bos: bool = False,
        progress: bool = True,
    ) -> APExperts:
        """Capture ``pooling``-pooled responses of every sentence of ``corpus`` at ``sites``, then fit."""
        from probes.capture import capture

        chosen = list(languages) if languages is not None else list(corpus.languages)
        parts: dict[Site, list[Tensor]] = {site: [] for site in sites}
        labels: list[str] = []
        for language in chosen:
            texts = corpus.texts(language)
            pooled = capture(
                model, tokenizer, texts, list(sites), pooling=self.pooling, batch_size=batch_size,
                max_length=max_length, exclude_bos=exclude_bos, progress=progress,
            )  # fmt: skip
            for site in sites:
                parts[site].append(pooled[site].reshape(len(texts), -1))
            labels += [language] * len(texts)
        return self.fit({site: torch.cat(chunks) for site, chunks in parts.items()}, labels, model=model)


def _unit_values(
    responses: Mapping[Site, Tensor], sites: Sequence[Site], layers: Tensor, neurons: Tensor, positive: Tensor
) -> dict[str, Tensor]:
    """on_p50, on_p90 (over positives) and off_mean (over negatives) of the chosen units."""
    columns = torch.zeros(positive.shape[0], len(layers), dtype=torch.float64)
    for site in sites:
        here = (layers == site.layer).nonzero().flatten()
        if len(here):
            columns[:, here] = torch.as_tensor(responses[site]).double()[:, neurons[here]]
    on, off = columns[positive], columns[~positive]
    return {
        "on_p50": torch.quantile(on, 0.5, dim=0) if len(layers) else columns[0],
        "on_p90": torch.quantile(on, 0.9, dim=0) if len(layers) else columns[0],
        "off_mean": off.mean(dim=0),
    }
