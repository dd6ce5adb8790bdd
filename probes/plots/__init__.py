"""Figures of probes tables: data in, a matplotlib Figure out (the caller shows it or saves it with :func:`save`),
every one in the paper style of :mod:`probes.plots.style`."""

from probes.plots.heatmaps import ablation_heatmap, divergence_heatmap, usage_heatmap
from probes.plots.layers import alignment_per_layer, compare_per_layer, langid_per_layer, neurons_per_layer
from probes.plots.style import save

__all__ = [
    "ablation_heatmap",
    "alignment_per_layer",
    "compare_per_layer",
    "divergence_heatmap",
    "langid_per_layer",
    "neurons_per_layer",
    "save",
    "usage_heatmap",
]
