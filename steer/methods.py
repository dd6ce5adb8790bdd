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

from probes.analysis import Activations
from probes.artifacts import LinearMap, NeuronSet, ShiftVector
from probes.capture import NeuronStats, Tokenization, capture
from probes.capture.progress import Progress, progress_bar
from probes.data import ParallelCorpus
from probes.find import LAPE, APExperts, HeadProbe, fit_map, fit_shift
from probes.model import ROUTER_CHANNELS, Site, arch_table, model_identity, model_type, n_layers, router_layers
from steer.convert import add_vector, apply_map, head_shift, set_neurons, zero_neurons
from steer.evaluate import Setting
from steer.router import promote_pivot_experts
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
    incline: dict[str, LinearMap] = field(default_factory=dict)
    procrustes: dict[str, LinearMap] = field(default_factory=dict)
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
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
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
        raise ValueError(f"methods {impossible} do not apply to a {model_type(model)} model")
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
    data: dict[tuple[Site, str], torch.Tensor] = {}
    order = list(dict.fromkeys([*everyone, *lape_languages]))
    with progress_bar(progress, "fit") as bar:
        for lang in order:
            bar.set_description(f"fit: capture {lang}")
            sites = pooled_sites if lang in everyone else []
            if lang in lape_languages:
                sites = sites + [Site(layer, "mlp_gate") for layer in every_layer]

            def count_active(site: Site, values: torch.Tensor, _rows, lang=lang) -> None:
                if site.component == "mlp_gate":
                    stats.add(site, lang, values)

            pooled = capture(model, tokenizer, train.texts(lang), sites, on_tokens=count_active,
                             tokenization=tokenization, progress=bar)  # fmt: skip
            data |= {(site, lang): values for site, values in pooled.items() if site.component != "mlp_gate"}
        bar.set_description(f"fit: {', '.join(methods)}")
    identity = model_identity(model)
    stats.model = identity
    found = Findings(depth)
    acts = Activations(data, model=identity, pooling="mean", ids=train.ids) if data else None
    for lang in languages:
        if "shift" in methods:
            found.shifts[lang] = fit_shift(acts, lang, pivot=pivot)
        for method, maps in (("incline", found.incline), ("procrustes", found.procrustes)):
            if method in methods:
                maps[lang] = fit_map(acts, lang, pivot=pivot, method=method)
        if "heads" in methods:
            found.heads[lang] = HeadProbe().fit(acts, lang, pivot=pivot).shift_vector(n_heads)
    if wanted["router"]:
        selected = ROUTER_CHANNELS.index("selected")
        found.router_usage = {layer: acts.get(Site(layer, "router"), pivot)[:, selected].mean(0)
                              for layer in wanted["router"]}  # fmt: skip
    if "lape" in methods:
        found.lape = LAPE().fit(stats, languages=lape_languages).neurons_
    if "ap" in methods:
        found.ap = APExperts(k=ap_k).fit(acts, "mlp_act", everyone).neurons_
    return found


def settings(found: Findings, *, pivot: str = "eng") -> list[Setting]:
    """The evaluated grid: a few strengths and layers per method, every plan gated to its language."""
    middle = max(1, found.layers // 2)
    out: list[Setting] = []

    if found.shifts:
        for layer, alpha in ((middle, 0.5), (middle, 1.0)):
            out.append(Setting("shift", f"layer={layer},alpha={alpha}", layer, lambda lang, layer=layer, alpha=alpha: [
                (add_vector(found.shifts[lang], alpha, [layer]), gated([lang]))]))
    if found.incline:
        for rule in ("code", "interpolate"):
            out.append(Setting("incline", f"all layers,last token,mode={rule},sigma=0.5", 1, lambda lang, rule=rule: [
                (apply_map(found.incline[lang], 0.5, rule), gated([lang], prefill="last", decode="none"))]))
    if found.procrustes:
        out.append(Setting("procrustes", f"layer={middle},interpolate,sigma=1.0", middle, lambda lang: [
            (apply_map(found.procrustes[lang], 1.0, "interpolate", [middle]), gated([lang]))]))
    if found.lape is not None:
        out.append(Setting("lape", "zero own neurons", 1, lambda lang: [
            (zero_neurons(found.lape, lang), gated([lang]))] if lang in found.lape.languages else []))
    if found.ap is not None:
        experts = set_neurons(found.ap, pivot)
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
            (head_shift(found.heads[lang], 1.0), gated([lang]))]))
    return out

