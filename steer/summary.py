"""Summaries of a steering evaluation (the table of :func:`steer.evaluate.evaluate`): the best setting per
method, the gain-vs-cost summary, and their figures (before/after per layer, the Pareto view)."""

from __future__ import annotations

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure


def before_after(evaluation: pd.DataFrame, metric: str = "mexa") -> Figure:
    """Per layer, ``metric`` with the intervention off (dashed) and on (solid): one panel per method (its
    best setting), one colour per language. ``evaluation`` has the columns of :data:`steer.evaluate.COLUMNS`."""
    rows = evaluation[evaluation["metric"] == metric]
    best = best_settings(evaluation, f"{metric}_mean_after")
    methods = list(best["method"])
    languages = sorted(rows["language"].unique())
    colors = dict(zip(languages, colormaps["tab20"].colors))
    columns = max(1, min(3, len(methods)))
    rows_of_panels = -(-max(1, len(methods)) // columns)
    figure = Figure(figsize=(4.2 * columns + 1.2, 3.4 * rows_of_panels), layout="constrained")
    grid = figure.subplots(rows_of_panels, columns, squeeze=False, sharey=True)
    axes = list(grid.flat)
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax, (_, choice) in zip(axes, best.iterrows()):
        chosen = rows[(rows["method"] == choice["method"]) & (rows["setting"] == choice["setting"])]
        for language, part in chosen.groupby("language"):
            part = part.sort_values("layer")
            ax.plot(part["layer"], part["off"], linestyle="--", color=colors[language], alpha=0.6)
            ax.plot(part["layer"], part["on"], marker=".", color=colors[language], label=language)
        ax.set(title=f"{choice['method']}\n{choice['setting']}", xlabel="layer", ylim=(-0.02, 1.02))
        ax.title.set_fontsize("small")
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel(f"{metric}\n(dashed: off, solid: on)")
    grid[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def pareto(evaluation: pd.DataFrame, gain: str = "mexa_mean_after", cost: str = "loss_target") -> Figure:
    """Alignment gain against side effect, one point per (method, setting), averaged over languages; the
    Pareto front (most gain for least cost) is drawn as a line."""
    summary = setting_summary(evaluation, gain, cost)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    for method, part in summary.groupby("method"):
        ax.scatter(100 * part["cost"], part["gain"], label=method, s=30)
    front = summary.sort_values("cost")
    front = front[front["gain"] >= front["gain"].cummax()]
    ax.plot(100 * front["cost"], front["gain"], color="grey", linewidth=1, zorder=0)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set(xlabel=f"{cost}: relative change (%)", ylabel=f"{gain}: change", title="alignment gain vs side effect")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def setting_summary(evaluation: pd.DataFrame, gain: str = "mexa_mean_after", cost: str = "loss_target") -> pd.DataFrame:
    """Per (method, setting): mean ``gain`` delta and mean relative ``cost`` change over languages."""
    keys = ["method", "setting"]
    gains = evaluation[evaluation["metric"] == gain].groupby(keys)["delta"].mean().rename("gain")
    costs = evaluation[evaluation["metric"] == cost]
    costs = (costs["delta"] / costs["off"]).groupby([costs["method"], costs["setting"]]).mean().rename("cost")
    return pd.concat([gains, costs], axis=1).reset_index()


def best_settings(evaluation: pd.DataFrame, gain: str = "mexa_mean_after") -> pd.DataFrame:
    """The setting of each method with the largest mean ``gain`` over languages."""
    summary = setting_summary(evaluation, gain)
    return summary.loc[summary.groupby("method")["gain"].idxmax()].reset_index(drop=True)
