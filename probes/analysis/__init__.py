"""Analysis (pure: no model): the Activations noun, alignment and routing metrics, bootstrap, tidy tables."""

from probes.analysis.activations import Activations, ActivationsError
from probes.analysis.alignment import (
    NEURON_METRICS, PAIR_METRICS, POOL_METRICS, MetricError, cosine_matrix, linear_cka, matched_random_gap, mexa,
    neuron_overlap, neuron_overlap_retrieval, retrieval_top1, retrieval_top1_reverse, retrieval_topk,
    strong_alignment_ap, strong_alignment_map, strong_alignment_map_by_language,
)  # fmt: skip
from probes.analysis.bootstrap import bootstrap_ci
from probes.analysis.langid import language_id_scores
from probes.analysis.measure import ALL_METRICS, measure
from probes.analysis.routing import (
    entropy, expert_set_overlap, expert_usage, jsd, language_experts, measure_routing, normalised_jsd,
    router_matrices, routing_divergence, set_overlap, universal_experts,
)  # fmt: skip

__all__ = [
    "ALL_METRICS", "Activations", "ActivationsError", "MetricError", "NEURON_METRICS", "PAIR_METRICS", "POOL_METRICS",
    "bootstrap_ci", "cosine_matrix", "entropy", "expert_set_overlap", "expert_usage", "jsd", "language_experts",
    "language_id_scores", "linear_cka", "matched_random_gap", "measure", "measure_routing", "mexa",
    "neuron_overlap", "neuron_overlap_retrieval", "normalised_jsd", "retrieval_top1", "retrieval_top1_reverse",
    "retrieval_topk", "router_matrices", "routing_divergence", "set_overlap", "strong_alignment_ap",
    "strong_alignment_map", "strong_alignment_map_by_language", "universal_experts",
]
