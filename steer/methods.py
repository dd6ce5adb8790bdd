"""Fit every steering method on a training split and turn the findings into evaluable settings.

Methods (METHODS.md): ``shift`` (mean shift vector added at one layer), ``incline`` (least-squares maps at
every layer, last prompt token, both rules), ``procrustes`` (orthogonal map at one layer), ``lape``
(zero the language's LAPE neurons), ``ap`` (set the pivot's AP expert units to their median response) and
``heads`` (CLAIM: shift the most language-specific heads) and, in MoE models, ``router`` (Bandarkar et al.:
promote the pivot's most used experts in the middle layers). Every plan is gated to the language it was
fitted for, so pivot inputs run untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from probes.capture import capture
from probes.corpus import ParallelCorpus
from probes.directions import HeadProbe, ShiftVector
from probes.directions import LinearMap as FittedMap
from probes.models import model_identity
from probes.neurons import LAPE, APExperts, NeuronSet
from probes.routing import ROUTER_CHANNELS
from probes.sites import Site, arch_table, n_layers, router_layers
from probes.stats import NeuronStats
from steer.evaluate import Setting
from steer.interventions import AddVector, HeadShift, LinearMap, SetNeurons, ZeroNeurons
from steer.routing import promote_pivot_experts
from steer.schedule import gated

METHODS = ("shift", "incline", "procrustes", "lape", "ap", "heads", "router")


def available_methods(model: nn.Module, methods: Sequence[str] = METHODS) -> list[str]:
    """``methods`` that apply to ``model``: LAPE and AP need per-neuron MLP sites (dense models), ``router``
    needs an MoE router."""
    table = arch_table(model)
    missing = {"lape": table.mlp_gate is None, "ap": table.mlp_act is None, "router": not router_layers(model)}
    return [method for method in methods if not missing.get(method, False)]


@dataclass
class Findings:
    """What the methods found on the training split, per language (artifacts, saveable)."""

    layers: int
    shifts: dict[str, ShiftVector] = field(default_factory=dict)
    incline: dict[str, FittedMap] = field(default_factory=dict)
    procrustes: dict[str, FittedMap] = field(default_factory=dict)
    heads: dict[str, ShiftVector] = field(default_factory=dict)
    lape: NeuronSet | None = None
    ap: NeuronSet | None = None
    router_usage: dict[int, torch.Tensor] = field(default_factory=dict)  # the pivot's expert usage per layer


def fit_methods(
    model: nn.Module,
    tokenizer,
    train: ParallelCorpus,
    *,
    languages: Sequence[str],
    pivot: str = "eng",
    methods: Sequence[str] = METHODS,
    lape_languages: Sequence[str] | None = None,
    n_heads: int = 8,
    ap_k: int = 100,
    batch_size: int = 16,
    progress: bool = True,
) -> Findings:
    """Fit ``methods`` for each of ``languages`` against ``pivot`` on ``train`` (pooled with ``mean``).

    One forward pass per language feeds every method: pooled ``resid`` (shift, INCLINE, Procrustes), ``head``
    in the middle layers (CLAIM), ``mlp_act`` (AP experts) and streaming ``mlp_gate`` counts (LAPE). LAPE
    compares activation probabilities across ``lape_languages`` (default: pivot and ``languages``); more
    languages make its entropy more telling.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    impossible = sorted(set(methods) - set(available_methods(model, methods)))
    if impossible:
        raise ValueError(f"methods {impossible} do not apply to a {model.config.model_type} model")
    depth = n_layers(model)
    every_layer = range(1, depth + 1)
    middle = range(max(1, depth // 3), max(2, 2 * depth // 3) + 1)
    wanted = {
        "resid": every_layer if {"shift", "incline", "procrustes"} & set(methods) else (),
        "head": middle if "heads" in methods else (),
        "mlp_act": every_layer if "ap" in methods else (),
        "router": router_layers(model) if "router" in methods else (),
    }
    pooled_sites = [Site(layer, component) for component, layers in wanted.items() for layer in layers]
    everyone = [pivot, *languages]
    lape_languages = list(lape_languages or everyone) if "lape" in methods else []
    stats = NeuronStats(bins=0)
    pooled: dict[str, dict[Site, torch.Tensor]] = {}
    for lang in dict.fromkeys([*everyone, *lape_languages]):
        sites = pooled_sites if lang in everyone else []
        if lang in lape_languages:
            sites = sites + [Site(layer, "mlp_gate") for layer in every_layer]

        def count_active(site: Site, values: torch.Tensor, _rows, lang=lang) -> None:
            if site.component == "mlp_gate":
                stats.add(site, lang, values)

        pooled[lang] = capture(model, tokenizer, train.texts(lang), sites, on_tokens=count_active,
                               batch_size=batch_size, progress=progress)  # fmt: skip

    def by_layer(component: str) -> dict[int, dict[str, torch.Tensor]]:
        return {layer: {lang: pooled[lang][Site(layer, component)] for lang in everyone} for layer in wanted[component]}

    found = Findings(depth)
    identity = model_identity(model)
    resid = by_layer("resid")
    for lang in languages:
        if "shift" in methods:
            found.shifts[lang] = ShiftVector.from_store(resid, lang, pivot=pivot, model=identity)
        for method, maps in (("incline", found.incline), ("procrustes", found.procrustes)):
            if method in methods:
                maps[lang] = FittedMap.from_store(resid, lang, pivot=pivot, method=method, model=identity)
        if "heads" in methods:
            found.heads[lang] = HeadProbe().fit(by_layer("head"), lang, pivot=pivot).shift_vector(n_heads, model=model)
    if "lape" in methods:
        found.lape = LAPE().fit(stats, languages=lape_languages, model=model).neurons_
    if "ap" in methods:
        responses = {Site(layer, "mlp_act"): torch.cat([pooled[lang][Site(layer, "mlp_act")] for lang in everyone])
                     for layer in every_layer}  # fmt: skip
        labels = [lang for lang in everyone for _ in train.texts(lang)]
        found.ap = APExperts(k=ap_k).fit(responses, labels, model=model).neurons_
    selected = ROUTER_CHANNELS.index("selected")
    found.router_usage = {layer: pooled[pivot][Site(layer, "router")][:, selected].mean(0) for layer in wanted["router"]}
    return found


def settings(found: Findings, *, pivot: str = "eng") -> list[Setting]:
    """The evaluated grid: a few strengths and layers per method, every plan gated to its language."""
    middle = max(1, found.layers // 2)
    out: list[Setting] = []

    if found.shifts:
        for layer, alpha in ((middle, 0.5), (middle, 1.0)):
            out.append(Setting("shift", f"layer={layer},alpha={alpha}", layer, lambda lang, layer=layer, alpha=alpha: [
                (AddVector({layer: found.shifts[lang].vectors[layer]}, alpha), gated([lang]))]))
    if found.incline:
        for mode in ("code", "interpolate"):
            out.append(Setting("incline", f"all layers,last token,mode={mode},sigma=0.5", 1, lambda lang, mode=mode: [
                (LinearMap.from_map(found.incline[lang], 0.5, mode), gated([lang], prefill="last", decode="none"))]))
    if found.procrustes:
        out.append(Setting("procrustes", f"layer={middle},interpolate,sigma=1.0", middle, lambda lang: [
            (_procrustes_at(found.procrustes[lang], middle, 1.0), gated([lang]))]))
    if found.lape is not None:
        out.append(Setting("lape", "zero own neurons", 1, lambda lang: [
            (ZeroNeurons(found.lape.units(lang)), gated([lang]))] if lang in found.lape.languages else []))
    if found.ap is not None:
        experts = SetNeurons.from_neurons(found.ap, pivot)
        out.append(Setting("ap", f"set {pivot} experts to on_p50", min(experts.layers), lambda lang: [
            (experts, gated([lang]))]))
    if found.router_usage:
        promote = promote_pivot_experts(found.router_usage, n_experts=2, delta=2.0)
        layers = "-".join(map(str, promote.layers))
        out.append(Setting("router", f"promote top-2 {pivot} experts,layers={layers},delta=2.0",
                           min(promote.layers), lambda lang: [(promote, gated([lang]))]))
    if found.heads:
        first = min(found.heads[next(iter(found.heads))].layers)
        out.append(Setting("heads", "top heads,alpha=1.0", first, lambda lang: [
            (HeadShift.from_shift(found.heads[lang], 1.0), gated([lang]))]))
    return out


def _procrustes_at(fitted: FittedMap, layer: int, sigma: float) -> LinearMap:
    """Interpolate towards a Procrustes map at one layer only."""
    return LinearMap({layer: fitted.matrices[layer]}, sigma, "interpolate", fitted.component,
                     {layer: fitted.mean_source[layer]}, {layer: fitted.mean_pivot[layer]})

