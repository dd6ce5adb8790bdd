"""What a steering method is to xlalign: a :class:`Method` record (what its training pass reads, how it fits, the
settings the closed loop evaluates, the artifact ``xlalign find`` writes) and the contexts it is handed."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from probes.analysis import Activations
from probes.capture import NeuronStats, Tokenization
from probes.data import ParallelCorpus
from probes.model import Site, n_layers, router_layers
from probes.model.access import site_location
from probes.model.sites import BackendError, SiteError


@dataclass(frozen=True)
class Need:
    """Sites the shared training pass reads for a method: ``component`` at ``layers``, mean-pooled per sentence
    (``pooling``) or, with ``tokens``, as per-token statistics (:class:`probes.capture.NeuronStats`), for
    ``languages`` (None: the pivot and the fitted languages)."""

    component: str
    layers: Sequence[int]
    tokens: bool = False
    languages: Sequence[str] | None = None
    pooling: str = "mean"


@dataclass
class Training:
    """The training split and what the shared pass read from it (``acts``: pooled rows; ``tokens``: per-token
    statistics per component). ``options`` holds method options (``n_heads``, ``ap_k``, ...) by name."""

    model: nn.Module
    tokenizer: Any
    train: ParallelCorpus
    languages: list[str]
    pivot: str
    tokenization: Tokenization = Tokenization()
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: Any = False
    acts: Activations | None = None
    tokens: dict[str, NeuronStats] = field(default_factory=dict)

    @property
    def everyone(self) -> list[str]:
        """The pivot and the fitted languages."""
        return [self.pivot, *self.languages]

    @property
    def every_layer(self) -> range:
        return range(1, n_layers(self.model) + 1)

    @property
    def middle(self) -> range:
        """The middle third of the layers."""
        depth = n_layers(self.model)
        return range(max(1, depth // 3), max(2, 2 * depth // 3) + 1)

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value

    @cached_property
    def profile(self) -> dict[int, float]:
        """Mean MEXA between the pivot and each language per layer (pooled ``resid`` of the training split)."""
        from steer.keeping import alignment_profile

        by_layer = dict(self.acts.by_layer("resid", self.everyone))
        return alignment_profile(
            {layer: rows[self.pivot] for layer, rows in by_layer.items()},
            [{layer: rows[lang] for layer, rows in by_layer.items()} for lang in self.languages],
        )


@dataclass(frozen=True)
class Grid:
    """What a method's settings are built from: every method's findings, the profile, and how plans are made."""

    findings: Any  # steer.methods.Findings
    model: nn.Module | None
    tokenizer: Any
    pivot: str = "eng"
    sweep: bool = False
    incline_settings: Sequence[tuple[str, float]] = ()
    tokenization: Tokenization = Tokenization()

    @property
    def middle(self) -> int:
        return max(1, self.findings.layers // 2)


def needs_sites(model: nn.Module, component: str) -> str | None:
    """Why ``model`` (through its backend) cannot run a method on ``component`` sites, or None."""
    routers = router_layers(model)
    if component == "router" and not routers:
        return "it needs an MoE router and this model is dense"
    try:
        site_location(model, Site(routers[0] if component == "router" else 1, component))
    except (SiteError, BackendError) as error:
        return f"it needs {component} sites: {error}"
    return None


@dataclass(frozen=True)
class Method:
    """One steering method.

    ``component``: what its training pass reads and its plans edit. ``needs(training)``: the sites the shared
    pass reads for it (none: it runs passes of its own in ``fit``). ``fit(training)``: its findings (an artifact,
    or ``{language: artifact}``). ``settings(findings, grid)``: the evaluated settings. ``finds``: the kind of
    artifact ``xlalign find`` writes from the findings (``shift``, ``map``, ``neurons``, ``eraser``), or None with
    the reason in ``unsaved``. ``default``: in the closed loop's default set. ``profile``: its settings need the
    training split's alignment profile. ``options``: the names of the options (``fit_methods(**options)``) it reads.
    """

    name: str
    summary: str
    component: str
    fit: Callable[[Training], Any]
    settings: Callable[[Any, Grid], list]
    needs: Callable[[Training], Sequence[Need]] = lambda training: ()
    finds: str | None = None
    unsaved: str = ""
    default: bool = True
    profile: bool = False
    options: tuple[str, ...] = ()

    def unavailable(self, model: nn.Module) -> str | None:
        """Why this method cannot run on ``model`` through its backend, or None."""
        return needs_sites(model, self.component)
