"""INCLINE fitted and applied as its released code does (weixuan-wang123/INCLINE: ``intervention.py``,
``intervention_llama.py``). :func:`fit_incline_maps` fits the maps on its half code-switched pairs;
:func:`incline` applies one.

A clean forward pass of the prompts gives, at every mapped layer ``l``, the last prompt token's value ``c_l``
(INCLINE maps MLP outputs: ``mlp_out``); its target is ``c_l + sign * sigma * (c_l W_l)`` from that clean
value (``sign=-1`` as the Llama script, ``+1`` as the BLOOM one); the steered pass overwrites the last prompt
token at every layer with its target, in the prefill only (decode steps are untouched). Because each target
comes from the clean pass, the edits do not compound through the layers, as an
:class:`~steer.interventions.ApplyMap` at every layer (which maps the already-steered value) does.

The released scripts sweep ``sigma`` over -1..1 in steps of 0.1 (their list reads ``-0.3-0.2``, so -0.3 and
-0.2 are missing and -0.5 appears twice): :data:`steer.choices.SIGMAS` is the intended grid.

    plan = [incline(model, tokenizer, prompts, fitted_map, sigma=0.5)]
    with steer(model, plan):
        out = model.generate(**batch_of(prompts), ...)   # the same prompts, in the same order
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from probes.capture.bundle import takes_bundle
from probes.analysis import Activations
from probes.artifacts import LinearMap, map_formula
from probes.capture import Tokenization, capture, trace
from probes.capture.progress import Progress
from probes.data import ParallelCorpus
from probes.find import code_switched_pairs, fit_map
from probes.model import Site, model_identity, model_type, n_layers
from steer.convert import default_layers
from steer.interventions import finite
from steer.patch import Patch
from steer.schedule import Schedule
from steer.interventions import InterventionError

INCLINE_MODES = ("code", "interpolate")


@takes_bundle
def incline(
    model,
    tokenizer,
    prompts: Sequence[str],
    fitted: LinearMap,
    sigma: float,
    *,
    sign: float = 1.0,
    mode: str = "code",
    layers: Sequence[int] | None = None,
    tokenization: Tokenization = Tokenization(),
) -> tuple[Patch, Schedule]:
    """The plan item that applies ``fitted`` to ``prompts`` as INCLINE does (every layer of the map unless
    ``layers``); example ``e`` of a steered batch is ``prompts[e]``. ``mode="code"`` is the released rule
    ``c + sign * sigma * (c W)``; ``"interpolate"`` writes ``(1 - sigma) c + sigma (c W)`` (docs/methods.md's
    variant), both from the clean ``c``."""
    sites = incline_sites(fitted, sigma, sign, mode, layers)
    clean = trace(model, tokenizer, list(prompts), sites, tokenization=tokenization)
    return incline_patch({site.layer: clean.tokens(site) for site in sites}, fitted, sigma, sign=sign, mode=mode)


def incline_sites(fitted: LinearMap, sigma: float, sign: float, mode: str, layers: Sequence[int] | None) -> list[Site]:
    """The sites INCLINE reads its clean values at and writes its targets to (after checking its parameters)."""
    if mode not in INCLINE_MODES:
        raise InterventionError(f"INCLINE mode {mode!r}: choose from {', '.join(INCLINE_MODES)}")
    finite(sigma, "sigma", "incline", " (xlalign steer: --strength; xlalign evaluate: --incline-sigmas)")
    finite(sign, "sign", "incline")
    chosen = sorted(fitted.matrices) if layers is None else default_layers(fitted, layers)
    return [Site(layer, fitted.component) for layer in chosen]


def incline_patch(
    clean: dict[int, Sequence[Tensor]], fitted: LinearMap, sigma: float, *, sign: float = 1.0, mode: str = "code"
) -> tuple[Patch, Schedule]:
    """INCLINE's plan item from the clean pass's values (``clean[layer][e]``: prompt ``e``'s ``(tokens, d)``): each
    prompt's last token replaced by its target, written in the prefill only."""
    values = {}
    for layer, per_prompt in clean.items():
        targets = []
        for tokens in per_prompt:
            last = tokens[-1]
            moved = map_formula(
                last, fitted.matrices[layer], fitted.mean_source.get(layer), fitted.mean_pivot.get(layer)
            )
            target = tokens.clone()
            target[-1] = last + sign * sigma * moved if mode == "code" else (1 - sigma) * last + sigma * moved
            targets.append(target)
        values[layer] = targets
    return Patch(values, fitted.component), Schedule(prefill="last", decode="none")


@takes_bundle
def fit_incline_maps(
    model: nn.Module,
    tokenizer,
    train: ParallelCorpus,
    languages: Sequence[str],
    *,
    pivot: str = "eng",
    style: str | None = None,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> dict[str, LinearMap]:
    """INCLINE maps fitted as its released code fits them: per layer, least squares from the token-mean
    ``mlp_out`` of the training pairs, every second one code-switched (``style``: ``bloom`` for BLOOM, as
    ``intervention.py``, else ``llama``, as ``intervention_llama.py``; see
    :func:`probes.find.code_switched_pairs`), one map per language of ``languages``."""
    style = style or ("bloom" if model_type(model) == "bloom" else "llama")
    sites = [Site(layer, "mlp_out") for layer in range(1, n_layers(model) + 1)]
    identity = model_identity(model)
    _, doubled = code_switched_pairs(train.texts(pivot), train.texts(pivot), style)  # the pivot side of every pair
    pivot_side = capture(model, tokenizer, doubled, sites, tokenization=tokenization, progress=progress)
    maps = {}
    for lang in languages:
        source, _ = code_switched_pairs(train.texts(lang), train.texts(pivot), style)
        own = capture(model, tokenizer, source, sites, tokenization=tokenization, progress=progress)
        pairs = {(site, lang): own[site] for site in sites} | {(site, pivot): pivot_side[site] for site in sites}
        maps[lang] = fit_map(
            Activations(pairs, model=identity, pooling="mean"), lang, pivot=pivot, component="mlp_out", method="incline"
        )
    return maps
