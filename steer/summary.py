"""Summaries of a steering evaluation (the table of :func:`steer.evaluate.evaluate`): the best setting per
method, the gain-vs-cost summary, the Pareto front with the language-keeping goal, and their figures
(before/after per layer, the Pareto view)."""

from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import StrMethodFormatter

from probes.plots.style import (
    TEXT_WIDTH,
    layer_axis,
    legend_columns,
    metric_label,
    metric_name,
    metric_unit,
    paper_figure,
    series_styles,
)


@paper_figure
def before_after(evaluation: pd.DataFrame, metric: str = "mexa") -> Figure:
    """Per layer, ``metric`` with the intervention off (dashed) and on (solid): one panel per method (its
    best setting), one colour and marker per language. ``evaluation`` has the columns of
    :data:`steer.evaluate.COLUMNS`."""
    rows = evaluation[evaluation["metric"] == metric]
    best = best_settings(evaluation, f"{metric}_mean_after")
    languages = sorted(rows["language"].unique())
    styles = series_styles(languages)
    columns = max(1, min(3, len(best)))
    rows_of_panels = -(-max(1, len(best)) // columns)
    figure = Figure(figsize=(min(TEXT_WIDTH, 1.0 + 2.0 * columns), 0.3 + 2.0 * rows_of_panels), layout="constrained")
    grid = figure.subplots(rows_of_panels, columns, squeeze=False, sharey=True)
    axes = list(grid.flat)
    for ax in axes[len(best) :]:
        ax.set_visible(False)
    for ax, (_, choice) in zip(axes, best.iterrows()):
        chosen = rows[(rows["method"] == choice["method"]) & (rows["setting"] == choice["setting"])]
        for language, part in chosen.groupby("language"):
            part = part.sort_values("layer")
            style = styles[language]
            ax.plot(part["layer"], part["off"], linestyle="--", color=style["color"], alpha=0.6, linewidth=0.8)
            ax.plot(part["layer"], part["on"], label=language, **style)
        setting = textwrap.fill(choice["setting"].replace(",", ", "), 36)
        ax.set(title=f"{choice['method']}\n{setting}", ylim=(-0.02, 1.02))
        ax.title.set_fontsize("small")
        layer_axis(ax.xaxis)
        ax.grid(True)
    for row in grid:
        row[0].set_ylabel(metric_label(metric))
    handles = [
        *axes[0].get_legend_handles_labels()[0],
        Line2D([], [], color="grey", linestyle="--", label="off"),
        Line2D([], [], color="grey", label="on"),
    ]
    grid[0][-1].legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(handles))
    )
    return figure


def pareto_front(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``summary`` (cost, gain) that no other row beats: no more gain at the same or lower cost."""
    ordered = summary.sort_values(["cost", "gain"], ascending=[True, False])
    best_before = ordered["gain"].cummax().shift(fill_value=float("-inf"))
    return ordered[ordered["gain"] > best_before]


def short_labels(summary: pd.DataFrame) -> pd.Series:
    """Per row of ``summary`` (method, setting): the method and the parts of its setting (comma-separated) that
    differ between that method's settings."""

    def label(method: str, setting: str, others: list[str]) -> str:
        varying = [part for part in setting.split(",") if not all(part in other.split(",") for other in others)]
        return " ".join([method, ", ".join(varying)]).strip()

    settings = summary.groupby("method")["setting"].agg(list)
    return pd.Series(
        [label(m, s, settings[m]) for m, s in zip(summary["method"], summary["setting"])], index=summary.index
    )


KEY_WIDTH = 38  # characters per line of the Pareto plot's key (two columns at the figure's width)


def _number_points(ax, points: pd.DataFrame, near: float = 7.0) -> list[str]:
    """Number ``points`` (by cost, then gain) beside each marker, to the left near the right edge; points within
    ``near`` typographic points of each other share one note ("2,3"). Returns the key: "n  label" per point."""
    ax.get_ylim()  # settle the autoscaled limits before reading positions
    points = points.sort_values(["cost", "gain"])
    xy = points[["cost", "gain"]].to_numpy()
    shown = ax.transData.transform(xy) * 72 / ax.figure.dpi
    groups: dict[int, list[int]] = {}  # row of the first point -> the numbers written there
    for row in range(len(points)):
        anchor = next((first for first in groups if abs(shown[first] - shown[row]).max() < near), row)
        groups.setdefault(anchor, []).append(row + 1)
    to_axes = ax.transData + ax.transAxes.inverted()
    for row, numbers in groups.items():
        left = to_axes.transform(xy[row])[0] > 0.85
        ax.annotate(
            ",".join(map(str, numbers)),
            tuple(xy[row]),
            xytext=(-3 if left else 3, 3),
            textcoords="offset points",
            ha="right" if left else "left",
            va="bottom",
            fontsize=6,
        )
    return [f"{number}  {label}" for number, label in enumerate(points["label"], start=1)]


@paper_figure
def pareto(evaluation: pd.DataFrame, gain: str = "mexa_mean_after", cost: str = "loss_target") -> Figure:
    """Alignment gain against side effect, one point per (method, setting), averaged over languages; the
    Pareto front (most gain for least cost) is drawn as a line; its points and each method's best setting carry
    a number, which the legend's key names. The cost axis is linear to 10% and logarithmic beyond."""
    summary = setting_summary(evaluation, gain, cost)
    summary = summary.assign(cost=100 * summary["cost"], label=short_labels(summary))
    methods = sorted(summary["method"].unique())
    styles = series_styles(methods)
    figure = Figure(figsize=(TEXT_WIDTH * 0.62, 3.0), layout="constrained")
    ax = figure.subplots()
    for method, part in summary.groupby("method"):
        ax.scatter(part["cost"], part["gain"], label=method, s=18, zorder=3, **styles[method])
    front = pareto_front(summary)
    ax.plot(front["cost"], front["gain"], color="black", linestyle=":", linewidth=0.8, zorder=1, label="Pareto front")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(min(-1.0, 2 * summary["cost"].min()), max(100.0, 2 * summary["cost"].max()))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.margins(y=0.1)
    best = summary.loc[summary.groupby("method")["gain"].idxmax()]
    key = _number_points(ax, pd.concat([front, best]).drop_duplicates(["method", "setting"]))
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set(
        xlabel=f"{metric_name(cost)}: relative change (%)",
        ylabel=f"{metric_name(gain)}:\nchange ({metric_unit(gain)})",
        title="alignment gain vs side effect",
    )
    ax.grid(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    key = [textwrap.fill(entry, KEY_WIDTH, subsequent_indent="     ") for entry in key]
    figure.legend(
        [Line2D([], [], linestyle="none") for _ in key],
        key,
        loc="outside lower center",
        ncols=2,
        handlelength=0,
        handletextpad=0,
        fontsize=6,
        title="numbered points",
        title_fontsize=6,
    )
    rows = max(sum(entry.count("\n") + 1 for entry in key[: -(-len(key) // 2)]), 1)
    figure.set_figheight(3.0 + 0.1 * rows)
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


GOAL = {"gain": 0.10, "fidelity": 0.95, "loss": 0.05}  # MEXA gain (CI above 0), line fidelity, relative loss rise


def meets_goal(evaluation: pd.DataFrame, goal: dict = GOAL) -> pd.DataFrame:
    """Per (method, setting, language): whether MEXA (mean over the layers from the first edited one) rose by at
    least ``goal['gain']`` with its 95% interval above zero, line-level fidelity stayed at least
    ``goal['fidelity']`` and the loss on the language rose by at most ``goal['loss']`` (relative)."""
    keys = ["method", "setting", "language"]
    rows = evaluation.set_index([*keys, "metric"])
    gain = rows.xs("mexa_mean_after", level="metric")
    loss = rows.xs("loss_target", level="metric")
    fidelity = rows.xs("line_fidelity", level="metric")["on"] if "line_fidelity" in set(evaluation["metric"]) else None
    table = pd.DataFrame({"gain": gain["delta"], "ci_low": gain["ci_low"], "loss": loss["delta"] / loss["off"]})
    table["fidelity"] = fidelity if fidelity is not None else float("nan")
    table["meets"] = (
        (table["gain"] >= goal["gain"])
        & (table["ci_low"] > 0)
        & (table["fidelity"] >= goal["fidelity"])
        & (table["loss"] <= goal["loss"])
    )
    return table.reset_index()


def front_table(evaluation: pd.DataFrame, goal: dict = GOAL) -> pd.DataFrame:
    """The settings on the Pareto front of MEXA gain vs relative loss cost (means over languages), with their
    mean line-level fidelity and the number of languages meeting ``goal`` (:func:`meets_goal`)."""
    front = pareto_front(setting_summary(evaluation))
    goals = (
        meets_goal(evaluation, goal)
        .groupby(["method", "setting"])
        .agg(fidelity=("fidelity", "mean"), meeting=("meets", "sum"), languages=("meets", "size"))
    )
    return front.join(goals, on=["method", "setting"]).reset_index(drop=True)
