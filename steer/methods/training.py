"""Fit registered methods on a training split: one forward pass per language reads the union of what the methods
need (pooled rows and per-token statistics), then each method fits on it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from probes.capture.bundle import takes_bundle
from probes.analysis import Activations
from probes.artifacts import LanguageDetector
from probes.capture import NeuronStats, Tokenization, capture
from probes.capture.distributed import ranks
from probes.capture.progress import Progress, progress_bar
from probes.data import ParallelCorpus
from probes.find import earliest_detector
from probes.model import Site, model_identity, model_type, n_layers
from steer.errors import EvaluationError
from steer.keeping import profile_layers
from steer.methods.record import Need, Training
from steer.methods.registry import canonical, method, names


@dataclass
class Findings:
    """What the methods found on the training split: ``by_method[name]`` (an artifact or ``{language: artifact}``),
    the alignment profile (mean MEXA pivot vs language per layer) where a method or the detector used it, and the
    language detector (``detect``)."""

    layers: int
    by_method: dict[str, Any] = field(default_factory=dict)
    profile: dict[int, float] = field(default_factory=dict)
    detector: LanguageDetector | None = None

    def __getitem__(self, name: str) -> Any:
        return self.by_method[canonical(name)]

    def __contains__(self, name: str) -> bool:
        return canonical(name) in self.by_method


def unavailable_methods(model: nn.Module, methods: Sequence[str] | None = None) -> dict[str, str]:
    """``methods`` (default: every registered one) that cannot run on ``model`` through its backend, each with
    the reason (an MoE router on a dense model, a site its backend cannot read)."""
    reasons = {}
    for name in names() if methods is None else methods:
        why = method(name).unavailable(model)
        if why:
            reasons[canonical(name)] = why
    return reasons


def available_methods(model: nn.Module, methods: Sequence[str] | None = None) -> list[str]:
    """``methods`` (default: the closed loop's default set) that apply to ``model`` and its backend."""
    chosen = [name for name in names() if method(name).default] if methods is None else [canonical(m) for m in methods]
    missing = unavailable_methods(model, chosen)
    return [name for name in chosen if name not in missing]


@takes_bundle
def fit_methods(
    model: nn.Module,
    tokenizer,
    train: ParallelCorpus,
    *,
    languages: Sequence[str],
    pivot: str = "eng",
    methods: Sequence[str] | None = None,
    detect: bool = False,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
    split: bool = False,
    **options,
) -> Findings:
    """Fit ``methods`` (default: the closed loop's default set that applies) for each of ``languages`` against
    ``pivot`` on ``train``; with ``detect``, also a language detector (:func:`probes.find.earliest_detector`) at
    the first layer that tells the languages apart, below the most aligned one (for gating on the model's own
    detection). ``options`` go to the methods (``n_heads``, ``ap_k``, ``lape_languages``, ``incline_style``, ...).
    ``split``: under ``torchrun`` the shared pass's languages are split across the ranks and gathered."""
    chosen = available_methods(model) if methods is None else list(dict.fromkeys(canonical(m) for m in methods))
    records = [method(name) for name in chosen]
    impossible = unavailable_methods(model, chosen)
    if impossible:
        raise EvaluationError(
            f"these methods cannot run on this {model_type(model)} model: "
            + "; ".join(f"{name}: {why}" for name, why in impossible.items())
        )
    known = {name for record in map(method, names()) for name in record.options}
    if set(options) - known:
        raise EvaluationError(
            f"fit_methods: unknown options {sorted(set(options) - known)}; the methods read {', '.join(sorted(known))}"
        )
    training = Training(model, tokenizer, train, list(languages), pivot, tokenization, options, progress)
    needs = [need for record in records for need in record.needs(training)]
    profiled = detect or any(record.profile for record in records)
    if profiled:  # the alignment profile reads pooled resid
        needs.append(Need("resid", training.every_layer))
    found = Findings(n_layers(model))
    with progress_bar(progress, "fit") as bar:
        training.progress = bar
        _shared_pass(training, needs, split)
        for record in records:
            bar.set_description(f"fit: {record.name}")
            found.by_method[record.name] = record.fit(training)
    if profiled:
        found.profile = training.profile
    if detect:
        below = range(1, max(2, profile_layers(found.profile)[0]))
        found.detector = earliest_detector(training.acts, list(below), languages=training.everyone)
    return found


def _shared_pass(training: Training, needs: Sequence[Need], split: bool) -> None:
    """One capture per language (and pooling) of every site the ``needs`` ask for; fills ``training.acts`` and
    ``training.tokens``."""
    pooled: dict[tuple[str, str], set[Site]] = defaultdict(set)  # (language, pooling) -> sites
    streamed: dict[str, set[Site]] = defaultdict(set)  # language -> per-token sites
    for need in needs:
        for lang in need.languages or training.everyone:
            sites = {Site(layer, need.component) for layer in need.layers}
            (streamed[lang] if need.tokens else pooled[lang, need.pooling]).update(sites)
    identity = model_identity(training.model)
    stats = {need.component: NeuronStats(bins=0) for need in needs if need.tokens}
    data: dict[tuple[Site, str], torch.Tensor] = {}
    poolings = sorted({pooling for _, pooling in pooled} or {"mean"})  # per-token sites ride on the first
    order = list(dict.fromkeys([*training.everyone, *(lang for lang, _ in pooled), *streamed]))
    group = ranks() if split else None
    for lang in group.mine(order) if group is not None else order:
        for pooling in poolings:
            counted = streamed[lang] if pooling == poolings[0] else set()
            sites = pooled.get((lang, pooling), set()) | counted
            if not sites:
                continue
            training.progress.set_description(f"fit: capture {lang}")

            def on_tokens(site: Site, values: torch.Tensor, _rows, lang=lang, counted=counted) -> None:
                if site in counted:
                    stats[site.component].add(site, lang, values.reshape(values.shape[0], -1))

            rows = capture(
                training.model,
                training.tokenizer,
                training.train.texts(lang),
                sorted(sites),
                pooling=pooling,
                on_tokens=on_tokens if counted else None,
                tokenization=training.tokenization,
                progress=training.progress,
            )
            data |= {(site, lang): values for site, values in rows.items() if site in pooled.get((lang, pooling), ())}
    if group is not None and group.world > 1:  # each language was read whole by one rank: gathering is exact
        data = {key: value for part in group.gather(data) for key, value in part.items()}
        for component, part_stats in stats.items():
            parts = group.gather(part_stats._state)
            part_stats._state = {key: part[key] for part in parts for key in part}
    for part_stats in stats.values():
        part_stats.model = identity
    training.tokens = stats
    if data:
        pooling = poolings[0] if len(poolings) == 1 else None
        training.acts = Activations(data, model=identity, pooling=pooling, ids=training.train.ids)
