"""report.md sections: alignment per layer, language-specific layers and neurons, steering results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from probes.data.files import atomic_path
from probes.plots import save
from steer.summary import GOAL, best_settings, front_table
from xlalign.choices import LOSS_SENTENCES, PROMPTS


def save_figure(figure: Figure, path: Path) -> str:
    """Write ``figure`` as PNG atomically (the paper style's resolution, no time stamp); return the markdown that
    embeds it (relative to the report)."""
    with atomic_path(path) as temporary:
        save(figure, temporary)
    return f"![{path.stem.replace('_', ' ')}]({path.name})"


def header(
    *,
    model: str,
    corpus: str,
    n_sentences: int,
    languages,
    pivot: str,
    pooling: str,
    command: str,
    dtype,
    sizes: tuple[int, int],
) -> list[str]:
    """The report's head: what ran, on what, how (``sizes``: loss texts and fidelity prompts per language)."""
    n_loss, n_prompts = sizes
    full = (
        f" (reduced: below the full evaluation's {LOSS_SENTENCES} and {PROMPTS}; run the same command without "
        "`--loss-sentences` and `--prompts`, on a larger corpus such as NTREX, for the full evaluation)"
        if n_loss < LOSS_SENTENCES or n_prompts < PROMPTS
        else ""
    )
    return [
        "# xlalign report",
        "",
        f"- model: `{model}` in `{str(dtype).removeprefix('torch.')}`",
        f"- corpus: `{corpus}`, {n_sentences} parallel sentences, languages: {', '.join(languages)}",
        f"- pivot: `{pivot}`; pooling: `{pooling}`; layer 0 = embedding output, layer i = output of block i",
        f"- evaluation: {n_loss} held-out texts per language for the loss, {n_prompts} prompts for the output "
        f"language{full}",
        f"- command: `{command}`",
        "",
    ]


def alignment_section(table: pd.DataFrame, figure: str) -> list[str]:
    """Figure, most aligned layers, per-language summary and the per-layer metric table (mean over languages)."""
    retrieval = table[table["metric"] == "retrieval_top1"].pivot(index="layer", columns="language", values="value")
    mexa = table[table["metric"] == "mexa"].pivot(index="layer", columns="language", values="value")
    best_layers = retrieval.mean(axis=1).sort_values(ascending=False).index[:3].tolist()
    lines = [
        "## Alignment with the pivot, per layer",
        "",
        figure,
        "",
        f"**Most aligned layers** (mean retrieval top-1 over languages): {', '.join(map(str, best_layers))}.",
        "",
        "| language | best layer (retrieval) | retrieval top-1 there | MEXA mean over layers | MEXA max over layers |",
        "|---|---|---|---|---|",
    ]
    for language in retrieval.columns:
        best = int(retrieval[language].idxmax())
        lines.append(
            f"| {language} | {best} | {retrieval[language][best]:.3f} | {mexa[language].mean():.3f} | {mexa[language].max():.3f} |"
        )
    per_layer = table[table["language"] != "all"].pivot_table(index="layer", columns="metric", values="value")
    lines += [
        "",
        "Every metric per layer, mean over languages (`metrics.csv` has each language):",
        "",
        *markdown_table(per_layer.round(3).reset_index()),
        "",
    ]
    return lines


def language_specific_section(table: pd.DataFrame, langid_figure: str, neurons_figure: str | None) -> list[str]:
    langid = table[table["metric"] == "langid_acc"].set_index("layer")["value"]
    specific = langid.sort_values(ascending=False).index[:3].tolist()
    lines = [
        "## Language-specific layers and neurons",
        "",
        langid_figure,
        "",
        f"**Most language-specific layers** (highest language-ID probe accuracy): {', '.join(map(str, specific))}; "
        f"least: {', '.join(map(str, langid.sort_values().index[:3].tolist()))}.",
        "",
    ]
    if neurons_figure:
        lines += ["LAPE language-specific neurons (`mlp_gate`), fitted on the training split:", "", neurons_figure, ""]
    return lines


def routing_section(routing: pd.DataFrame, divergence_figure: str, usage_figure: str) -> list[str]:
    """MoE routing: divergence of expert importance from the pivot per layer and language, expert usage."""
    jsd = routing[routing["metric"] == "jsd"].pivot(index="layer", columns="language", values="value")
    by_layer = jsd.mean(axis=1).sort_values()
    n = max(1, min(3, len(by_layer) // 2))
    return [
        "## Routing (mixture of experts)",
        "",
        divergence_figure,
        "",
        f"Routing closest to the pivot's (mean JSD over languages) in layers "
        f"{', '.join(map(str, by_layer.index[:n].tolist()))}; farthest in "
        f"{', '.join(map(str, by_layer.index[-n:].tolist()))}. "
        f"Most divergent language: {jsd.mean().idxmax()}; least: {jsd.mean().idxmin()}.",
        "",
        usage_figure,
        "",
    ]


def steering_section(
    evaluation: pd.DataFrame, figures: dict[str, str], generations: pd.DataFrame, *, n_test: int, pivot: str
) -> list[str]:
    """Before/after and Pareto figures, the best setting per method, and generations off vs on."""
    best = best_settings(evaluation)
    translated = "chrf" in set(evaluation["metric"])
    lines = [
        "## Steering, evaluated on held-out sentences",
        "",
        f"Each method is fitted on the training split and evaluated on {n_test} held-out sentences per language; "
        f"every plan is gated to its language, so `{pivot}` inputs run untouched (`loss_pivot` change 0). "
        "Intervals are 95% paired bootstrap intervals over sentences. All numbers: `evaluation.csv`.",
        "",
        figures["before_after"],
        "",
        figures["pareto"],
        "",
        "Best setting per method (by mean change of MEXA averaged over the layers from the intervention layer on):",
        "",
        "| method | setting | MEXA change (mean over languages) | languages with CI > 0 | target loss change | "
        "line-level fidelity change |" + (" 3-shot translation chrF change (CI > 0, CI < 0) |" if translated else ""),
        "|---|---|---|---|---|---|" + ("---|" if translated else ""),
    ]
    for _, row in best.iterrows():
        part = evaluation[(evaluation["method"] == row["method"]) & (evaluation["setting"] == row["setting"])]
        gain = part[part["metric"] == "mexa_mean_after"]
        loss = part[part["metric"] == "loss_target"]
        fidelity = part[part["metric"] == "line_fidelity"]
        fidelity_change = f"{fidelity['delta'].mean():+.2f}" if len(fidelity) else "n/a"
        chrf = part[part["metric"] == "chrf"]
        chrf_change = (
            f" {chrf['delta'].mean():+.1f} ({int((chrf['ci_low'] > 0).sum())}, "
            f"{int((chrf['ci_high'] < 0).sum())} of {len(chrf)}) |"
            if translated
            else ""
        )
        lines.append(
            f"| {row['method']} | {row['setting']} | {gain['delta'].mean():+.3f} | "
            f"{int((gain['ci_low'] > 0).sum())}/{len(gain)} ({', '.join(gain[gain['ci_low'] > 0]['language'])}) | "
            f"{100 * (loss['delta'] / loss['off']).mean():+.1f}% | {fidelity_change} |{chrf_change}"
        )
    front = front_table(evaluation)
    lines += [
        "",
        f"Pareto front (most MEXA gain for the least relative rise of the loss on the language, means over "
        f"languages) and the goal: MEXA +{GOAL['gain']:.2f} with its interval above 0, line-level fidelity "
        f">= {GOAL['fidelity']:.2f}, loss rise <= {100 * GOAL['loss']:.0f}%:",
        "",
        "| method | setting | MEXA change | target loss change | line-level fidelity | languages meeting the goal |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.method} | {r.setting} | {r.gain:+.3f} | {100 * r.cost:+.1f}% | {r.fidelity:.2f} | "
        f"{int(r.meeting)}/{int(r.languages)} |"
        for r in front.itertuples()
    ]
    if len(generations):
        lines += [
            "",
            "Greedy continuations of held-out prompts, off vs on (best MEXA setting overall):",
            "",
            *markdown_table(generations),
            "",
        ]
    return lines


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A DataFrame as markdown table lines (cells have '|' and newlines escaped)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return lines
