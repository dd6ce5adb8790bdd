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
