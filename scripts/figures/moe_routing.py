"""Routing in the tiny MoE trained on the demo corpus (``scripts/train_tiny_moe.py``), from
results/moe_routing/routing.csv and loss.csv: the trained model's divergence from English per layer and language,
and what promoting English's experts does to it and to the loss: ``python -m scripts.figures.moe_routing``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from probes.plots import divergence_heatmap
from probes.plots.style import BLOCK, TEXT_WIDTH, layer_axis, legend_columns, metric_label, paper_figure, series_styles
from scripts.figures.files import TableError, main, read_table

ROUTING = ("model", "setting", "layer", "language", "metric", "value")
LOSS = ("setting", "language", "loss")
PROMOTE = "promote delta="


def delta(setting: str, path: Path) -> float:
    """The promotion strength a setting names (``none``: 0)."""
    if setting == "none":
        return 0.0
    if not setting.startswith(PROMOTE):
        raise TableError(f"{path}: setting {setting!r} is neither 'none' nor '{PROMOTE}<d>'")
    return float(setting.removeprefix(PROMOTE))


@paper_figure
def promotion(routing: pd.DataFrame, loss: pd.DataFrame, deltas: dict[str, float]) -> Figure:
    """Left: divergence from English per layer (mean over languages) of the untrained model, the trained one and
    the trained one with English's experts promoted. Right: each language's held-out loss change against delta."""
    figure = Figure(figsize=(TEXT_WIDTH, 2.7), layout="constrained")
    left, right = figure.subplots(1, 2)
    jsd = routing[routing["metric"] == "jsd"]
    runs = jsd[["model", "setting"]].drop_duplicates().assign(order=lambda r: r["setting"].map(deltas))
    runs = runs.sort_values(["model", "order"], ascending=[False, True])  # untrained, trained, then by delta
    names = [
        model if setting == "none" else f"{model}, {setting}" for model, setting in zip(runs["model"], runs["setting"])
    ]
    styles = series_styles(names)
    for name, model, setting in zip(names, runs["model"], runs["setting"]):
        means = jsd[(jsd["model"] == model) & (jsd["setting"] == setting)].groupby("layer")["value"].mean()
        left.plot(means.index, means.to_numpy(), label=name, **styles[name])
    layer_axis(left.xaxis, BLOCK)
    left.set(ylabel=f"{metric_label('jsd')},\nmean over languages", title="routing divergence from English")
    left.grid(True)
    left.legend(loc="best")
    change = loss.assign(delta=loss["setting"].map(deltas))
    unsteered = change[change["delta"] == 0].set_index("language")["loss"]
    change["change"] = change["loss"] - change["language"].map(unsteered)
    languages = sorted(change["language"].unique())
    styles = series_styles(languages)
    for language, part in change.groupby("language"):
        part = part.sort_values("delta")
        right.plot(part["delta"], part["change"], label=language, **styles[language])
    right.axhline(0, color="black", linewidth=0.5)
    right.set(
        xlabel="promotion of English's experts, delta (router logit)",
        ylabel="held-out loss change (nats)",
        xticks=sorted(set(deltas.values())),
        title="side effect",
    )
    right.grid(True)
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(languages)))
    return figure


def draw(results: Path) -> dict[str, Figure]:
    folder = results / "moe_routing"
    routing = read_table(folder / "routing.csv", ROUTING)
    loss = read_table(folder / "loss.csv", LOSS)
    deltas = {
        setting: delta(setting, folder / name)
        for name, table in (("routing.csv", routing), ("loss.csv", loss))
        for setting in table["setting"].unique()
    }
    trained = routing[(routing["model"] == "trained") & (routing["setting"] == "none")]
    title = "tiny MoE (trained): routing divergence from English"
    return {
        "moe_routing/divergence": divergence_heatmap(trained, "jsd", title=title),
        "moe_routing/promotion": promotion(routing, loss, deltas),
    }


if __name__ == "__main__":
    main([draw], __doc__)
