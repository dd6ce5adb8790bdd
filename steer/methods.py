"""Fit every steering method on a training split and turn the findings into evaluable settings.

Methods (METHODS.md): ``shift`` (mean shift vector added at one layer), ``incline`` (least-squares maps at
every layer, last prompt token, both rules), ``procrustes`` (orthogonal map at one layer), ``lape``
(zero the language's LAPE neurons), ``ap`` (set the pivot's AP expert units to their median response) and
``heads`` (CLAIM: shift the most language-specific heads). Every plan is gated to the language it was fitted
for, so pivot inputs run untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from probes.capture import capture
from probes.corpus import ParallelCorpus
from probes.directions import HeadProbe, ShiftVector, fit_incline, fit_procrustes, fit_shift_vectors
from probes.directions import LinearMap as FittedMap
from probes.models import model_identity
from probes.neurons import LAPE, APExperts, NeuronSet
from probes.sites import Site, n_layers
from steer.evaluate import Setting
from steer.interventions import AddVector, HeadShift, LinearMap, SetNeurons, ZeroNeurons
from steer.schedule import Schedule

METHODS = ("shift", "incline", "procrustes", "lape", "ap", "heads")


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


def fit_methods(
    model: nn.Module,
    tokenizer,
    train: ParallelCorpus,
    *,
    languages: Sequence[str],
    pivot: str = "eng",
    methods: Sequence[str] = METHODS,
    n_heads: int = 8,
    ap_k: int = 100,
    batch_size: int = 16,
    progress: bool = True,
) -> Findings:
    """Fit ``methods`` for each of ``languages`` against ``pivot`` on ``train`` (pooled with ``mean``)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    depth = n_layers(model)
    identity = model_identity(model)
    found = Findings(depth)
    everyone = [pivot, *languages]

    def pooled(component: str, layers: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        sites = [Site(layer, component) for layer in layers]
        by_language = {
            lang: capture(model, tokenizer, train.texts(lang), sites, batch_size=batch_size, progress=progress)
            for lang in everyone
        }
        return {site.layer: {lang: by_language[lang][site] for lang in everyone} for site in sites}

    if {"shift", "incline", "procrustes"} & set(methods):
        resid = pooled("resid", range(1, depth + 1))
        for lang in languages:
            pairs = {layer: (by[lang], by[pivot]) for layer, by in resid.items()}
            if "shift" in methods:
                vectors = fit_shift_vectors({l: p for l, (_, p) in pairs.items()}, {l: x for l, (x, _) in pairs.items()})
                found.shifts[lang] = ShiftVector(vectors, "resid", pivot, lang, "mean", {}, identity)
            if "incline" in methods:
                maps = {layer: fit_incline(x, p) for layer, (x, p) in pairs.items()}
                found.incline[lang] = FittedMap(maps, "resid", "incline", lang, pivot, {"ridge": 0.0}, identity)
            if "procrustes" in methods:
                fits = {layer: fit_procrustes(x, p) for layer, (x, p) in pairs.items()}
                found.procrustes[lang] = FittedMap(
                    {l: f[0] for l, f in fits.items()}, "resid", "procrustes", lang, pivot,
                    {"center": True, "normalize": True}, identity,
                    {l: f[1] for l, f in fits.items()}, {l: f[2] for l, f in fits.items()},
                )  # fmt: skip
    if "heads" in methods:
        middle = range(max(1, depth // 3), max(2, 2 * depth // 3) + 1)
        heads = pooled("head", middle)
        for lang in languages:
            found.heads[lang] = HeadProbe().fit(heads, lang, pivot=pivot).shift_vector(n_heads, model=model)
    if "lape" in methods:
        found.lape = LAPE().fit_from_model(model, tokenizer, train, everyone, batch_size=batch_size, progress=progress).neurons_
    if "ap" in methods:
        sites = [Site(layer, "mlp_act") for layer in range(1, depth + 1)]
        found.ap = APExperts(k=ap_k).fit_from_model(
            model, tokenizer, train, sites, everyone, batch_size=batch_size, progress=progress
        ).neurons_
    return found


def settings(found: Findings, *, pivot: str = "eng") -> list[Setting]:
    """The evaluated grid: a few strengths and layers per method, every plan gated to its language."""
    depth = found.layers
    middle, early = max(1, depth // 2), max(1, depth // 3)
    out: list[Setting] = []

    def gated(lang: str, **schedule) -> Schedule:
        return Schedule(languages=(lang,), **schedule)

    if found.shifts:
        for layer in sorted({early, middle}):
            for alpha in (0.5, 1.0):
                out.append(Setting("shift", f"layer={layer},alpha={alpha}", layer, lambda lang, layer=layer, alpha=alpha: [
                    (AddVector({layer: found.shifts[lang].vectors[layer]}, alpha), gated(lang))]))
    if found.incline:
        for mode in ("code", "interpolate"):
            out.append(Setting("incline", f"all layers,last token,mode={mode},sigma=0.5", 1, lambda lang, mode=mode: [
                (LinearMap.from_map(found.incline[lang], 0.5, mode), gated(lang, prefill="last", decode="none"))]))
    if found.procrustes:
        for sigma in (0.5, 1.0):
            out.append(Setting("procrustes", f"layer={middle},interpolate,sigma={sigma}", middle, lambda lang, sigma=sigma: [
                (_procrustes_at(found.procrustes[lang], middle, sigma), gated(lang))]))
    if found.lape is not None:
        out.append(Setting("lape", "zero own neurons", 1, lambda lang: [
            (ZeroNeurons(found.lape.units(lang)), gated(lang))] if lang in found.lape.languages else []))
    if found.ap is not None:
        units, values = _by_layer(found.ap, pivot, "on_p50")
        first = min(units) if units else 1
        out.append(Setting("ap", f"set {pivot} experts to on_p50", first, lambda lang: [
            (SetNeurons(units, values, found.ap.component), gated(lang))]))
    if found.heads:
        first = min(found.heads[next(iter(found.heads))].layers)
        out.append(Setting("heads", "top heads,alpha=1.0", first, lambda lang: [
            (HeadShift.from_shift(found.heads[lang], 1.0), gated(lang))]))
    return out


def _procrustes_at(fitted: FittedMap, layer: int, sigma: float) -> LinearMap:
    """Interpolate towards a Procrustes map at one layer only."""
    return LinearMap({layer: fitted.matrices[layer]}, sigma, "interpolate", fitted.component,
                     {layer: fitted.mean_source[layer]}, {layer: fitted.mean_pivot[layer]})


def _by_layer(neurons: NeuronSet, language: str, value: str):
    rows, values = neurons.neurons[language], neurons.values[language][value]
    layers = torch.unique(rows[:, 0]).tolist()
    return ({int(l): rows[rows[:, 0] == l, 1] for l in layers}, {int(l): values[rows[:, 0] == l].float() for l in layers})
