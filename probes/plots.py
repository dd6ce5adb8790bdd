"""Figures: tidy tables in, matplotlib Figures out (the caller saves or shows them)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure


def alignment_per_layer(table: pd.DataFrame, metrics: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """One panel per metric: value against layer, one line per language."""
    metrics = list(metrics or table["metric"].unique())
    languages = sorted(table["language"].unique())
    colors = dict(zip(languages, colormaps["tab20"].colors))
    figure = Figure(figsize=(5.2 * len(metrics) + 1.2, 4.0), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        rows = table[table["metric"] == metric]
        for language, part in rows.groupby("language", sort=True):
            part = part.sort_values("layer")
            ax.plot(part["layer"], part["value"], marker=".", label=language, color=colors[language])
        ax.set(title=metric, xlabel="layer (0 = embeddings)", ylabel="value", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        figure.suptitle(title)
    return figure


def langid_per_layer(scores: pd.DataFrame) -> Figure:
    """Language-ID probe accuracy per layer (high: language-specific; chance: language-neutral)."""
    rows = scores[scores["metric"] == "langid_acc"].sort_values("layer")
    figure = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = figure.subplots()
    ax.plot(rows["layer"], rows["value"], marker=".")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="cross-validated accuracy", ylim=(-0.02, 1.02),
           title="language-ID probe accuracy per layer")
    ax.grid(alpha=0.3)
    return figure


def neurons_per_layer(counts: pd.DataFrame, title: str = "language-specific neurons per layer") -> Figure:
    """Stacked bars of neurons per layer, one colour per language (``counts``: layer, language, n_neurons)."""
    table = counts.pivot_table(index="layer", columns="language", values="n_neurons", fill_value=0)
    colors = colormaps["tab20"].colors
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = figure.subplots()
    bottom = None
    for i, language in enumerate(table.columns):
        ax.bar(table.index, table[language], bottom=bottom, label=language, color=colors[i % len(colors)])
        bottom = table[language] if bottom is None else bottom + table[language]
    ax.set(xlabel="layer", ylabel="neurons", title=title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def divergence_heatmap(table: pd.DataFrame, metric: str = "jsd", *, title: str = "") -> Figure:
    """Layer x language heatmap of one routing metric (e.g. from :func:`probes.analysis.routing.routing_divergence`)."""
    grid = table[table["metric"] == metric].pivot(index="layer", columns="language", values="value").sort_index()
    figure = Figure(figsize=(1.0 + 0.6 * grid.shape[1], 1.2 + 0.35 * grid.shape[0]), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=colormaps["viridis"])
    ax.set(xticks=range(grid.shape[1]), yticks=range(grid.shape[0]), xlabel="language", ylabel="layer")
    ax.set_xticklabels(grid.columns, rotation=90)
    ax.set_yticklabels(grid.index)
    figure.colorbar(image, ax=ax, label=metric)
    ax.set_title(title or f"routing {metric} from the pivot")
    return figure


def usage_heatmap(usage: pd.DataFrame, layers: Sequence[int] | None = None, *, title: str = "") -> Figure:
    """One language x expert heatmap of expert usage per layer (from :func:`probes.analysis.routing.expert_usage`)."""
    layers = sorted(usage["layer"].unique()) if layers is None else list(layers)
    cubes = [usage[usage["layer"] == layer].pivot(index="language", columns="expert", values="value").sort_index()
             for layer in layers]  # fmt: skip
    figure = Figure(figsize=(1.5 + 2.4 * len(layers), 1.2 + 0.3 * len(cubes[0])), layout="constrained")
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    top = max(cube.to_numpy().max() for cube in cubes)
    for ax, layer, cube in zip(axes, layers, cubes):
        image = ax.imshow(cube.to_numpy(), aspect="auto", cmap=colormaps["magma"], vmin=0, vmax=top)
        ax.set(title=f"layer {layer}", xlabel="expert", yticks=range(len(cube)))
        ax.set_yticklabels(cube.index)
    figure.colorbar(image, ax=list(axes), label="usage")
    if title:
        figure.suptitle(title)
    return figure
