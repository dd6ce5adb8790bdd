"""Heatmaps: routing divergence per layer and language, expert usage per language, and the ablation matrix
(loss change of every language when one language's neurons are zeroed)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probes.plots.style import BLOCK, DIVERGING, SEQUENTIAL, metric_label, paper_figure


def _label_ticks(ax, rows: Sequence, columns: Sequence, *, rotate: bool = True) -> None:
    ax.set(xticks=range(len(columns)), yticks=range(len(rows)))
    ax.set_xticklabels(columns, rotation=90 if rotate else 0)
    ax.set_yticklabels(rows)


@paper_figure
def divergence_heatmap(table: pd.DataFrame, metric: str = "jsd", *, title: str = "") -> Figure:
    """Layer x language heatmap of one routing metric (e.g. from :func:`probes.analysis.routing.routing_divergence`)."""
    grid = table[table["metric"] == metric].pivot(index="layer", columns="language", values="value").sort_index()
    figure = Figure(figsize=(1.6 + 0.3 * grid.shape[1], 1.1 + 0.22 * grid.shape[0]), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=SEQUENTIAL, vmin=0, interpolation="nearest")
    _label_ticks(ax, grid.index, grid.columns)
    ax.set(xlabel="language", ylabel=BLOCK)
    figure.colorbar(image, ax=ax, label=metric_label(metric))
    ax.set_title(title or f"routing {metric} from the pivot")
    return figure


@paper_figure
def usage_heatmap(usage: pd.DataFrame, layers: Sequence[int] | None = None, *, title: str = "") -> Figure:
    """One language x expert heatmap of expert usage per layer (from :func:`probes.analysis.routing.expert_usage`)."""
    layers = sorted(usage["layer"].unique()) if layers is None else list(layers)
    cubes = [
        usage[usage["layer"] == layer].pivot(index="language", columns="expert", values="value").sort_index()
        for layer in layers
    ]
    figure = Figure(figsize=(1.4 + 1.6 * len(layers), 1.0 + 0.18 * len(cubes[0])), layout="constrained")
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    top = max(cube.to_numpy().max() for cube in cubes)
    for ax, layer, cube in zip(axes, layers, cubes):
        image = ax.imshow(
            cube.to_numpy(),
            aspect="auto",
            cmap=SEQUENTIAL,
            vmin=0,
            vmax=top,
            interpolation="nearest",
            extent=(cube.columns.min() - 0.5, cube.columns.max() + 0.5, len(cube) - 0.5, -0.5),
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"layer {layer}", xlabel="expert", ylabel="language", yticks=range(len(cube)))
        ax.set_yticklabels(cube.index)
    figure.colorbar(image, ax=list(axes), label=metric_label("usage"))
    if title:
        figure.suptitle(title)
    return figure


@paper_figure
def ablation_heatmap(table: pd.DataFrame, *, title: str = "") -> Figure:
    """Loss change (after - before, nats) of each evaluated language (columns) when one language's neurons are
    zeroed (rows), centred at 0, every cell written out and the own-language cells in bold. ``table``: zeroed,
    evaluated, loss_before, loss_after (``xlalign ablate``); languages in the order they first appear."""
    change = table.assign(change=table["loss_after"] - table["loss_before"])
    columns = list(dict.fromkeys(change["evaluated"]))
    rows = list(dict.fromkeys(change["zeroed"]))
    grid = change.pivot(index="zeroed", columns="evaluated", values="change").loc[rows, columns]
    size = 0.36
    figure = Figure(figsize=(1.5 + size * len(columns), 1.0 + size * len(rows)), layout="constrained")
    ax = figure.subplots()
    norm = CenteredNorm(0)
    image = ax.imshow(grid.to_numpy(), cmap=DIVERGING, norm=norm, interpolation="nearest")
    for (i, zeroed), (j, evaluated) in ((r, c) for r in enumerate(rows) for c in enumerate(columns)):
        value = grid.iat[i, j]
        dark = abs(norm(value) - 0.5) > 0.3
        ax.text(
            j,
            i,
            f"{value:+.2f}",
            ha="center",
            va="center",
            fontsize=5,
            fontweight="bold" if zeroed == evaluated else "normal",
            color="white" if dark else "black",
        )
    _label_ticks(ax, rows, columns)
    ax.set(xlabel="language evaluated", ylabel="language whose neurons are zeroed")
    figure.colorbar(image, ax=ax, label="loss change (nats)", shrink=0.9)
    if title:
        ax.set_title(title)
    return figure
