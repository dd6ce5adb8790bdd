"""NeuronSet: units found per language at one site component (LAPE neurons, AP expert units).

A unit is ``(layer, neuron)``: ``layer`` counts decoder blocks from 1 (as :class:`probes.model.Site`),
``neuron`` indexes the last dimension of the component's tensor (``head``: the flattened heads x head_dim).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.artifacts.base import Artifact, ArtifactError
from probes.model.architectures import n_heads, n_layers, width
from probes.model.sites import COMPONENTS
from probes.errors import XlalignError


class NeuronError(XlalignError):
    """Bad input to a finder, or a NeuronSet that does not fit."""


@dataclass(frozen=True, eq=False)
class NeuronSet(Artifact):
    """Units found per language at one site component, with optional per-unit values and metadata.

    ``neurons[lang]`` is a ``(n, 2)`` LongTensor of ``(layer, neuron)`` rows in the finder's order (LAPE: sorted
    by layer and neuron; AP: top-k by decreasing AP, then bottom-k by increasing AP). ``values[lang][name]``
    is a ``(n,)`` float tensor aligned with those rows (``ap``, ``on_p50``, ``on_p90``, ``off_mean``,
    ``probability``, ``entropy``, ...). ``model`` is :func:`probes.model.model_identity` of the model the set
    was found on; ``params`` the finder's hyperparameters (JSON-serialisable).
    """

    component: str
    neurons: Mapping[str, Int[Tensor, "n 2"]]
    values: Mapping[str, Mapping[str, Float[Tensor, " n"]]] = field(default_factory=dict)
    model: Mapping[str, object] = field(default_factory=dict)
    method: str = ""
    params: Mapping[str, object] = field(default_factory=dict)

    KIND = "NeuronSet"

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

    def tensors(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for index, language in enumerate(self.languages):
            tensors[f"units.{index}"] = self.neurons[language]
            for name, value in self.values.get(language, {}).items():
                tensors[f"values.{index}.{name}"] = value
        return tensors

    def metadata(self) -> dict:
        return {
            "component": self.component,
            "languages": list(self.languages),
            "method": self.method,
            "params": dict(self.params),
            "value_names": {language: list(self.values.get(language, {})) for language in self.languages},
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict, where: str) -> NeuronSet:
        languages = meta["languages"]
        units = {language: tensors[f"units.{index}"] for index, language in enumerate(languages)}
        values = {
            language: {name: tensors[f"values.{index}.{name}"] for name in meta["value_names"][language]}
            for index, language in enumerate(languages)
        }
        return cls(meta["component"], units, values, meta["model"], meta["method"], meta["params"])

    def check_fits(self, model: nn.Module, *, where: str = "NeuronSet") -> None:
        """Raise if a unit's layer or neuron index does not exist in ``model`` (says which, and the sizes)."""
        layers, size = n_layers(model), width(model, self.component)
        if self.component == "head":  # head units index the flattened (heads * head_dim) output
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
