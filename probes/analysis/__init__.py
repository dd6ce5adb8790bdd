"""Analysis (pure: no model): the Activations noun, alignment and routing metrics, bootstrap, tidy tables.

Names load on first use, so importing the Activations noun (as the capture layer does) stays cheap.
"""

from importlib import import_module

_MODULES = {
    "probes.analysis.activations": "Activations ActivationsError",
    "probes.analysis.alignment": "ALL_METRICS NEURON_METRICS NEURON_POOLINGS PAIR_METRICS POOL_METRICS MetricError "
    "check_pair cosine_matrix linear_cka matched_random_gap mexa neuronxa neuron_overlap neuron_overlap_retrieval "
    "retrieval_top1 retrieval_top1_reverse retrieval_topk strong_alignment_ap strong_alignment_map strong_alignment_map_by_language",
    "probes.analysis.bootstrap": "bootstrap_ci",
    "probes.analysis.langid": "language_id_scores",
    "probes.analysis.output_language": "OutputLanguage OutputLanguageError identifiable iso639_1 script",
    "probes.analysis.tables": "COLUMNS measure metric_names",
    "probes.analysis.routing": "RoutingError entropy expert_set_overlap expert_usage jsd language_experts measure_routing "
    "normalised_jsd risk_difference router_matrices routing_divergence set_overlap universal_experts",
    "probes.analysis.word_alignment": "mutual_argmax similarity word_alignments word_of_token",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probes.analysis' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
