"""Figures against layer: alignment per layer and language, language-ID accuracy, neurons per layer, and one
measurement in two runs (e.g. two dtypes) compared per layer."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from probes.plots.style import (
    BLOCK,
    COLUMN_WIDTH,
    DIVERGING,
    PALETTE,
    TEXT_WIDTH,
    bar_styles,
    layer_axis,
    legend_columns,
    metric_label,
    metric_name,
    metric_unit,
    paper_figure,
    series_styles,
)


def _fraction_limits(ax, values: pd.Series) -> None:
    if values.between(0, 1).all():
        ax.set_ylim(-0.02, 1.02)


@paper_figure
def alignment_per_layer(table: pd.DataFrame, metrics: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """One panel per metric: value against layer, one line per language."""
    metrics = list(metrics or table["metric"].unique())
    languages = sorted(table[table["metric"].isin(metrics)]["language"].unique())
    styles = series_styles(languages)
    figure = Figure(figsize=(1.0 + 2.6 * len(metrics), 2.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        rows = table[table["metric"] == metric]
        for language, part in rows.groupby("language", sort=True):
            part = part.sort_values("layer")
            ax.plot(part["layer"], part["value"], label=language, **styles[language])
        layer_axis(ax.xaxis)
        ax.set_ylabel(metric_label(metric))
        _fraction_limits(ax, rows["value"])
        ax.grid(True)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(languages)))
    if title:
        figure.suptitle(title)
    return figure


@paper_figure
def langid_per_layer(scores: pd.DataFrame) -> Figure:
    """Language-ID probe accuracy per layer (high: language-specific; chance: language-neutral)."""
    rows = scores[scores["metric"] == "langid_acc"].sort_values("layer")
    figure = Figure(figsize=(COLUMN_WIDTH, 2.4), layout="constrained")
    ax = figure.subplots()
    ax.plot(rows["layer"], rows["value"], color=PALETTE[0], marker="o")
    layer_axis(ax.xaxis)
    ax.set(ylabel=metric_label("langid_acc"), ylim=(-0.02, 1.02), title="language-ID probe accuracy per layer")
    ax.grid(True)
    return figure


@paper_figure
def neurons_per_layer(counts: pd.DataFrame, title: str = "language-specific neurons per layer") -> Figure:
    """Stacked bars of neurons per layer, one colour per language (``counts``: layer, language, n_neurons)."""
    table = counts.pivot_table(index="layer", columns="language", values="n_neurons", fill_value=0)
    styles = bar_styles(list(table.columns))
    figure = Figure(figsize=(COLUMN_WIDTH + 0.8, 2.4), layout="constrained")
    ax = figure.subplots()
    bottom = None
    for language in table.columns:
        ax.bar(
            table.index,
            table[language],
            bottom=bottom,
            label=language,
            edgecolor="white",
            linewidth=0.3,
            **styles[language],
        )
        bottom = table[language] if bottom is None else bottom + table[language]
    layer_axis(ax.xaxis, BLOCK)
    ax.set(ylabel="neurons (count)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(table.columns)))
    return figure


@paper_figure
def compare_per_layer(table: pd.DataFrame, reference: str, other: str, *, title: str = "") -> Figure:
    """One column per metric: the ``reference`` run's value per layer and language (top) and the difference
    ``other`` - ``reference`` as a language x layer heatmap centred at 0 (bottom). ``table``: language, layer,
    metric, value_reference, value_other, difference (``scripts/dtype_alignment.py``)."""
    metrics = list(table["metric"].unique())
    languages = sorted(table["language"].unique())
    styles = series_styles(languages)
    figure = Figure(figsize=(min(TEXT_WIDTH, 1.0 + 2.9 * len(metrics)), 4.0), layout="constrained")
    grid = figure.subplots(2, len(metrics), squeeze=False, sharex="col", height_ratios=(3, 2))
    norm = CenteredNorm(0, halfrange=max(table["difference"].abs().max(), 1e-9))
    for (top, bottom), metric in zip(grid.T, metrics):
        rows = table[table["metric"] == metric]
        for language, part in rows.groupby("language", sort=True):
            part = part.sort_values("layer")
            top.plot(part["layer"], part["value_reference"], label=language, **styles[language])
        top.set(title=metric_name(metric), ylabel=f"{reference} ({metric_unit(metric) or 'value'})")
        _fraction_limits(top, rows["value_reference"])
        top.grid(True)
        cells = rows.pivot(index="language", columns="layer", values="difference").loc[languages]
        first, last = cells.columns.min(), cells.columns.max()
        image = bottom.imshow(
            cells.to_numpy(),
            aspect="auto",
            cmap=DIVERGING,
            norm=norm,
            interpolation="nearest",
            extent=(first - 0.5, last + 0.5, len(languages) - 0.5, -0.5),
        )
        bottom.set(yticks=range(len(languages)), ylabel="language")
        bottom.set_yticklabels(languages)
        layer_axis(bottom.xaxis)
    grid[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(languages)))
    figure.colorbar(image, ax=list(grid[1]), label=f"{other} - {reference}")
    if title:
        figure.suptitle(title)
    return figure
