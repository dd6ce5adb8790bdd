"""Research scaffolding, not part of the package. Routing of an MoE model against a pivot language, with a router
plan on the other languages, and the plan's side effect on held-out loss: the measurements of
``scripts/train_tiny_moe.py`` and notebook 05."""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
from torch import Tensor

from probes.analysis import expert_set_overlap, router_matrices, routing_divergence
from probes.capture import RouterTrace, trace_router
from probes.data import ParallelCorpus
from probes.model import router_layers
from steer.apply import steer
from steer.evaluate import next_token_loss
from steer.router import middle_layers, promote_pivot_experts

PIVOT = "eng"


def router_traces(
    model, tokenizer, corpus: ParallelCorpus, plan: Sequence = (), pivot: str = PIVOT
) -> dict[str, RouterTrace]:
    """Per language, the routing of its sentences; ``plan`` steers every language but ``pivot``."""
    return _per_language(model, corpus, plan, pivot, lambda texts: trace_router(model, tokenizer, texts))


def routing_table(traces: dict[str, RouterTrace], pivot: str = PIVOT, k: int = 2) -> pd.DataFrame:
    """``jsd``, ``jsd_norm`` and ``topk_jaccard`` from ``pivot`` per layer and language, of the expert importance
    Bandarkar et al.'s released code uses (total actual weight)."""
    importance = router_matrices(traces, "weight")
    return pd.concat(
        [routing_divergence(importance, pivot), expert_set_overlap(importance, pivot, k=k)], ignore_index=True
    )


def pivot_usage(model, tokenizer, corpus: ParallelCorpus, pivot: str = PIVOT) -> dict[int, Tensor]:
    """Per routed layer, the fraction of ``pivot`` tokens routed to each expert (mean over its sentences)."""
    trace = trace_router(model, tokenizer, corpus.texts(pivot))
    return {layer: trace.importance(layer, "selected").mean(dim=0) for layer in router_layers(model)}


def promotions(usage: dict[int, Tensor], deltas: Sequence[float], n_experts: int = 2) -> dict[float, list]:
    """Per delta, the plan promoting the pivot's ``n_experts`` most used experts in the middle routed layers."""
    middle = middle_layers(list(usage))
    return {delta: [promote_pivot_experts(usage, n_experts=n_experts, delta=delta, layers=middle)] for delta in deltas}


def losses_by_language(
    model, tokenizer, corpus: ParallelCorpus, plan: Sequence = (), pivot: str = PIVOT
) -> dict[str, float]:
    """Per language, the next-token loss on its sentences with ``plan`` on (``pivot`` never steered)."""
    return _per_language(model, corpus, plan, pivot, lambda texts: next_token_loss(model, tokenizer, texts))


def _per_language(model, corpus: ParallelCorpus, plan: Sequence, pivot: str, measure: Callable) -> dict:
    """``measure(texts)`` of each language's sentences, with ``plan`` on for every language but ``pivot``."""
    out = {}
    for lang in corpus.languages:
        with steer(model, list(plan) if lang != pivot else []):
            out[lang] = measure(corpus.texts(lang))
    return out
