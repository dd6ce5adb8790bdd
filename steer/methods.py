"""Fit every steering method on a training split and turn the findings into evaluable settings.

Methods (docs/methods.md): ``shift`` (mean shift vector added at one layer), ``diffmean`` (CLaS-Bench: the unit
difference of token means, added with strength alpha at every token of one layer), ``erase`` (LEACE: remove
the linear language information, fitted on all evaluated languages and the pivot), ``sandwich`` (shift or
erase at the most aligned layer, re-inject the language's own direction later; :mod:`steer.keeping`), ``incline`` (least-squares maps of
MLP outputs fitted on INCLINE's half code-switched pairs, applied as its released code applies them: targets
from a clean pass written at the last prompt token of every layer, :mod:`steer.incline`), ``procrustes``
(orthogonal map at one layer), ``lape`` (zero the language's LAPE neurons), ``ap`` (set the pivot's AP expert
units to their median response) and ``heads`` (CLAIM: shift the most language-specific heads) and, in MoE
models, ``router`` (Bandarkar et al.: promote the pivot's most used experts in the middle layers) and
``steermoe`` (force the experts the pivot uses more than the language, ban those it uses less, by risk
difference of token-level top-k routing). Every plan is gated to the language it was fitted for, so pivot
inputs run untouched, except LEACE's, which erases the pivot too (it makes the erased pair alike, not a language
and the unerased pivot) and is evaluated against the erased pivot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import nn

from probes.analysis import Activations, risk_difference
from probes.artifacts import Eraser, LanguageDetector, LinearMap, NeuronSet, ShiftVector
from probes.capture import NeuronStats, Tokenization, capture, trace_router
from probes.capture.progress import Progress, progress_bar
from probes.data import ParallelCorpus
from probes.find import LAPE, APExperts, HeadProbe, earliest_detector, fit_diffmean, fit_eraser, fit_map, fit_shift
from probes.model import ROUTER_CHANNELS, Site, model_identity, model_type, n_layers, router_layers
from probes.model.access import site_location
from probes.model.sites import BackendError, SiteError
from steer.choices import INCLINE_SIGMAS, METHODS
from steer.convert import add_vector, apply_map, head_shift, set_neurons, zero_neurons
from steer.evaluate import Setting
from steer.incline import fit_incline_maps, incline
from steer.keeping import alignment_profile, keeping_settings, profile_layers
from steer.router import promote_pivot_experts, steermoe_experts
from steer.schedule import gated
from steer.errors import EvaluationError

KEEPING = {"diffmean", "erase", "sandwich"}  # the language-keeping methods (steer.keeping)


# The component each method's training pass reads and its plan edits.
METHOD_COMPONENTS = {"shift": "resid", "diffmean": "resid", "erase": "resid", "sandwich": "resid",
                     "incline": "mlp_out", "procrustes": "resid", "lape": "mlp_gate", "ap": "mlp_act", "heads": "head",
                     "router": "router", "steermoe": "router"}  # fmt: skip


def unavailable_methods(model: nn.Module, methods: Sequence[str] = METHODS) -> dict[str, str]:
    """``methods`` that cannot run on ``model`` through its backend, each with the reason: LAPE and AP need
    per-neuron MLP sites (dense models), ``router`` and ``steermoe`` an MoE router, and every method a site its
    backend can read (the TransformerLens bridge has no ``mlp_gate``)."""
    reasons = {}
    dense = not router_layers(model)
    for method in methods:
        component = METHOD_COMPONENTS[method]
        if component == "router" and dense:
            reasons[method] = "it needs an MoE router and this model is dense"
            continue
        layer = router_layers(model)[0] if component == "router" else 1
        try:
            site_location(model, Site(layer, component))
        except (SiteError, BackendError) as error:
            reasons[method] = f"it needs {component} sites: {error}"
    return reasons


def available_methods(model: nn.Module, methods: Sequence[str] = METHODS) -> list[str]:
    """``methods`` that apply to ``model`` and its backend (see :func:`unavailable_methods`)."""
    missing = unavailable_methods(model, methods)
    return [method for method in methods if method not in missing]


@dataclass
class Findings:
    """What the methods found on the training split, per language (artifacts, saveable)."""

    layers: int
    shifts: dict[str, ShiftVector] = field(default_factory=dict)
    diffmean: dict[str, ShiftVector] = field(default_factory=dict)
    eraser: Eraser | None = None
    detector: LanguageDetector | None = None
    profile: dict[int, float] = field(default_factory=dict)  # mean MEXA pivot vs language per layer (training split)
    keeping: tuple[str, ...] = ()  # which of KEEPING were asked for (steer.keeping's settings)
    incline: dict[str, LinearMap] = field(default_factory=dict)
    procrustes: dict[str, LinearMap] = field(default_factory=dict)
    heads: dict[str, ShiftVector] = field(default_factory=dict)
    lape: NeuronSet | None = None
    ap: NeuronSet | None = None
    router_usage: dict[int, torch.Tensor] = field(default_factory=dict)  # the pivot's expert usage per layer
    risk: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # SteerMoE: pivot minus language
    experts_per_token: int = 0


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
    incline_style: str | None = None,
    detect: bool = False,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> Findings:
    """Fit ``methods`` for each of ``languages`` against ``pivot`` on ``train`` (pooled with ``mean``); with
    ``detect``, also a language detector (:func:`probes.find.earliest_detector`) at the first layer that tells
    the languages apart, below the most aligned one (for gating on the model's own detection).

    One forward pass per language feeds most methods: pooled ``resid`` (shift, Procrustes), ``head`` in the
    middle layers (CLAIM), ``mlp_act`` (AP experts) and streaming ``mlp_gate`` counts (LAPE). LAPE compares
    activation probabilities across ``lape_languages`` (default: pivot and ``languages``); more languages make
    its entropy more telling. INCLINE has its own passes over its training pairs
    (:func:`steer.incline.fit_incline_maps`, ``incline_style``).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise EvaluationError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    impossible = unavailable_methods(model, methods)
    if impossible:
        raise EvaluationError(f"these methods cannot run on this {model_type(model)} model: "
                         + "; ".join(f"{method}: {why}" for method, why in impossible.items()))
    depth = n_layers(model)
    every_layer = range(1, depth + 1)
    middle = range(max(1, depth // 3), max(2, 2 * depth // 3) + 1)
    wanted = {
        "resid": every_layer if {"shift", "procrustes", *KEEPING} & set(methods) or detect else (),
        "head": middle if "heads" in methods else (),
        "mlp_act": every_layer if "ap" in methods else (),
        "router": router_layers(model) if "router" in methods else (),
    }
    pooled_sites = [Site(layer, component) for component, layers in wanted.items() for layer in layers]
    everyone = [pivot, *languages]
    lape_languages = list(lape_languages or everyone) if "lape" in methods else []
    stats = NeuronStats(bins=0)
    token_means = NeuronStats(bins=0)  # DiffMean: residual means over every token (not sentence means)
    data: dict[tuple[Site, str], torch.Tensor] = {}
    order = list(dict.fromkeys([*everyone, *lape_languages]))
    with progress_bar(progress, "fit") as bar:
        for lang in order:
            bar.set_description(f"fit: capture {lang}")
            sites = pooled_sites if lang in everyone else []
            if lang in lape_languages:
                sites = sites + [Site(layer, "mlp_gate") for layer in every_layer]
            if not sites:  # only INCLINE, which has passes of its own
                continue

            def count_active(site: Site, values: torch.Tensor, _rows, lang=lang) -> None:
                if site.component == "mlp_gate":
                    stats.add(site, lang, values)
                elif site.component == "resid" and {"diffmean", "sandwich"} & set(methods) and lang in everyone:
                    token_means.add(site, lang, values)

            pooled = capture(model, tokenizer, train.texts(lang), sites, on_tokens=count_active,
                             tokenization=tokenization, progress=bar)  # fmt: skip
            data |= {(site, lang): values for site, values in pooled.items() if site.component != "mlp_gate"}
        identity = model_identity(model)
        if "incline" in methods:
            bar.set_description("fit: INCLINE pairs")
            incline_maps = fit_incline_maps(model, tokenizer, train, languages, pivot=pivot, style=incline_style,
                                            tokenization=tokenization, progress=bar)  # fmt: skip
        if "steermoe" in methods:
            bar.set_description("fit: SteerMoE routing")
            # SteerMoE's released code counts the sentence's own tokens only: BOS is fed but not counted.
            content = replace(tokenization, exclude_bos=True)
            routed = {lang: trace_router(model, tokenizer, train.texts(lang), tokenization=content)
                      for lang in everyone}  # fmt: skip
        bar.set_description(f"fit: {', '.join(methods)}")
    stats.model = token_means.model = identity
    found = Findings(depth, keeping=tuple(method for method in methods if method in KEEPING))
    acts = Activations(data, model=identity, pooling="mean", ids=train.ids) if data else None
    if "incline" in methods:
        found.incline = incline_maps
    for lang in languages:
        if "shift" in methods:
            found.shifts[lang] = fit_shift(acts, lang, pivot=pivot)
        if {"diffmean", "sandwich"} & set(methods):
            found.diffmean[lang] = fit_diffmean(token_means, lang, pivot=pivot, layers=every_layer)
        if "procrustes" in methods:
            found.procrustes[lang] = fit_map(acts, lang, pivot=pivot, method="procrustes")
        if "heads" in methods:
            found.heads[lang] = HeadProbe().fit(acts, lang, pivot=pivot).shift_vector(n_heads)
    if wanted["router"]:
        selected = ROUTER_CHANNELS.index("selected")
        found.router_usage = {layer: acts.get(Site(layer, "router"), pivot)[:, selected].mean(0)
                              for layer in wanted["router"]}  # fmt: skip
    if "steermoe" in methods:
        found.experts_per_token = int(next(iter(routed[pivot].ids.values())).shape[1])
        found.risk = {lang: {layer: risk_difference(routed[pivot].probs[layer], routed[lang].probs[layer],
                                                    found.experts_per_token) for layer in routed[pivot].layers}
                      for lang in languages}  # fmt: skip
    if {"erase", "sandwich"} & set(methods):
        found.eraser = fit_eraser(acts, languages=everyone, layers=list(range(1, depth)))
    if KEEPING & set(methods) or detect:
        by_layer = dict(acts.by_layer("resid", everyone))
        found.profile = alignment_profile({layer: rows[pivot] for layer, rows in by_layer.items()},
                                          [{layer: rows[lang] for layer, rows in by_layer.items()} for lang in languages])
    if detect:
        below = range(1, max(2, profile_layers(found.profile)[0]))
        found.detector = earliest_detector(acts, list(below), languages=everyone)
    if "lape" in methods:
        found.lape = LAPE().fit(stats, languages=lape_languages).neurons_
    if "ap" in methods:
        found.ap = APExperts(k=ap_k).fit(acts, "mlp_act", everyone).neurons_
    return found




def incline_grid(sigmas: Sequence[float] = INCLINE_SIGMAS) -> list[tuple[str, float]]:
    """(mode, sigma) of the INCLINE settings: the released rule at each of ``sigmas``, interpolation at 0.5."""
    return [("code", float(sigma)) for sigma in sigmas] + [("interpolate", 0.5)]


def settings(
    found: Findings, model: nn.Module | None = None, tokenizer=None, *, pivot: str = "eng",
    incline_settings: Sequence[tuple[str, float]] = tuple(incline_grid()), tokenization: Tokenization = Tokenization(),
    sweep: bool = False,
) -> list[Setting]:  # fmt: skip
    """The evaluated grid: a few strengths and layers per method, every plan gated to its language (LEACE's to
    the language and ``pivot``) (``sweep``:
    the language-keeping methods over layers and strengths, :func:`steer.keeping.keeping_settings`).

    ``incline_settings``: the (mode, sigma) pairs of INCLINE (:func:`steer.incline.incline`, sign +1: the
    released BLOOM script's ``c + sigma c W``; the Llama script's sigma is the negative); its plans are built
    for the texts they steer from a clean pass of ``model``, so INCLINE needs ``model`` and ``tokenizer``.
    """
    middle = max(1, found.layers // 2)
    out: list[Setting] = []

    if found.shifts:
        for layer, alpha in ((middle, 0.5), (middle, 1.0)):
            out.append(Setting("shift", f"layer={layer},alpha={alpha}", layer, lambda lang, texts, layer=layer,
                               alpha=alpha: [(add_vector(found.shifts[lang], alpha, [layer]), gated([lang]))]))
    out += keeping_settings(found, pivot=pivot, sweep=sweep)
    if found.incline:
        if model is None or tokenizer is None:
            raise EvaluationError("INCLINE settings need the model and tokenizer: each plan comes from a clean pass")

        def incline_plan(lang, texts, mode, sigma):
            patch, schedule = incline(model, tokenizer, texts, found.incline[lang], sigma, mode=mode,
                                      tokenization=tokenization)  # fmt: skip
            return [(patch, replace(schedule, only=(lang,)))]

        for mode, sigma in incline_settings:
            out.append(Setting("incline", f"clean pass,last token,every layer,mode={mode},sigma={sigma}", 1,
                               lambda lang, texts, mode=mode, sigma=sigma: incline_plan(lang, texts, mode, sigma)))
    if found.procrustes:
        out.append(Setting("procrustes", f"layer={middle},interpolate,sigma=1.0", middle, lambda lang, texts: [
            (apply_map(found.procrustes[lang], 1.0, "interpolate", [middle]), gated([lang]))]))
    if found.lape is not None:
        out.append(Setting("lape", "zero own neurons", 1, lambda lang, texts: [
            (zero_neurons(found.lape, lang), gated([lang]))] if lang in found.lape.languages else []))
    if found.ap is not None:
        experts = set_neurons(found.ap, pivot)
        out.append(Setting("ap", f"set {pivot} experts to on_p50", min(experts.layers), lambda lang, texts: [
            (experts, gated([lang]))]))
    if found.router_usage:
        promote = promote_pivot_experts(found.router_usage, n_experts=2, delta=2.0)
        layers = "-".join(map(str, promote.layers))
        out.append(Setting("router", f"promote top-2 {pivot} experts,layers={layers},delta=2.0",
                           min(promote.layers), lambda lang, texts: [(promote, gated([lang]))]))
    if found.risk:
        layers = sorted(next(iter(found.risk.values())))
        out.append(Setting("steermoe", f"force and ban {len(layers)} experts each by risk difference", layers[0],
                           lambda lang, texts: [(edit, gated([lang])) for edit in _steermoe(found, lang)]))
    if found.heads:
        first = min(found.heads[next(iter(found.heads))].layers)
        out.append(Setting("heads", "top heads,alpha=1.0", first, lambda lang, texts: [
            (head_shift(found.heads[lang], 1.0), gated([lang]))]))
    return out


def _steermoe(found: Findings, language: str) -> list:
    """SteerMoE for ``language``: force the experts the pivot uses more, ban those it uses less, as many of each
    as there are routed layers (fewer if the risk differences have fewer of a sign)."""
    risk = found.risk[language]
    n_positive = sum(int((values > 0).sum()) for values in risk.values())
    n_negative = sum(int((values < 0).sum()) for values in risk.values())
    return steermoe_experts(risk, n_force=min(len(risk), n_positive), n_ban=min(len(risk), n_negative),
                            k=found.experts_per_token)  # fmt: skip

