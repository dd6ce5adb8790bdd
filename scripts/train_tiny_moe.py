"""Train a tiny Mixtral-style MoE on the bundled demo corpus and measure its routing against English.

A model that has learned something shows routing structure: divergence from English that differs across
languages and layers. Promoting, in the middle layers, the experts English uses most (Bandarkar et al.)
should lower that divergence. Routing is fitted on the training split and measured on held-out sentences;
the results (and the command that made them) go to a Markdown file, and as tidy tables beside it (``--out
results/moe_routing.md``: ``results/moe_routing/routing.csv`` with columns ``model, setting, layer, language,
metric, value`` and ``loss.csv`` with ``setting, language, loss``; English is never steered). The run is
seeded and takes a few CPU minutes on one core; ``--save DIR`` keeps the trained model (``TinyMoE.load``).

    PYTHONPATH=. python scripts/train_tiny_moe.py --out results/moe_routing.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from probes.model import router_layers
from steer.router import middle_layers
from scripts.moe_routing import PIVOT, losses_by_language, pivot_usage, promotions, router_traces, routing_table
from scripts.tiny_moe import SIZES, demo_splits, train_tiny_moe, untrained_tiny_moe


def routing_tables(model, tokenizer, corpus, plan=()) -> pd.DataFrame:
    return routing_table(router_traces(model, tokenizer, corpus, plan))


def layer_means(table: pd.DataFrame, metric: str) -> pd.Series:
    return table[table["metric"] == metric].groupby("layer")["value"].mean()


def grid(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    return table[table["metric"] == metric].pivot(index="layer", columns="language", values="value")


def markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    cells = lambda values: "| " + " | ".join(values) + " |"  # noqa: E731
    lines = [cells([str(frame.index.name or ""), *map(str, frame.columns)]), cells(["---"] * (len(frame.columns) + 1))]
    lines += [cells([str(index), *(f"{value:.{digits}f}" for value in row)]) for index, row in frame.iterrows()]
    return "\n".join(lines)


def summary(jsd: pd.DataFrame, per_layer: pd.DataFrame, per_language: pd.DataFrame, middle: list[int]) -> list[str]:
    """The findings in words, computed from the tables."""
    by_lang, by_layer = jsd.mean(axis=0), jsd.mean(axis=1)
    strongest = [column for column in per_language.columns if column.startswith("middle jsd, delta=")][-1]
    delta = strongest.removeprefix("middle jsd, delta=")
    rows = per_language.drop(index="mean")
    lower = rows.index[rows[strongest] < rows["middle jsd"]]
    higher = rows.index[rows[strongest] >= rows["middle jsd"]]
    loss_change = per_language.loc["mean", f"loss, delta={delta}"] - per_language.loc["mean", "loss"]
    return [
        f"- Divergence from English differs across languages: averaged over layers it runs from "
        f"{by_lang.idxmin()} {by_lang.min():.3f} to {by_lang.idxmax()} {by_lang.max():.3f} nats; and across layers: "
        f"averaged over languages from {by_layer.min():.3f} (layer {by_layer.idxmin()}) to {by_layer.max():.3f} "
        f"(layer {by_layer.idxmax()}). The untrained model's near-uniform gates pick their top-2 by chance, so "
        f"its divergence is not zero either (up to {per_layer['untrained jsd'].max():.3f}; mean over layers "
        f"{per_layer['untrained jsd'].mean():.3f} against {per_layer['trained jsd'].mean():.3f} trained).",
        f"- Promoting English's top-2 experts in layers {middle} with delta={delta} lowers the middle-layer "
        f"divergence averaged over the non-English languages from {per_language.loc['mean', 'middle jsd']:.3f} to "
        f"{per_language.loc['mean', strongest]:.3f}, per layer "
        + ", ".join(
            f"{layer}: {per_layer.loc[layer, 'trained jsd']:.3f} -> "
            f"{per_layer.loc[layer, f'jsd, promote delta={delta}']:.3f}"
            for layer in middle
        )
        + f"; it lowers it for {len(lower)} of {len(rows)} languages and raises it for "
        f"{', '.join(higher) or 'none'}. Mean held-out loss changes by {loss_change:+.3f} nats.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deltas", default="0.5,1,2", help="router bias strengths to report")
    parser.add_argument("--out", default="results/moe_routing.md")
    parser.add_argument("--save", help="directory to save the trained model, tokenizer and training record in")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    train_set, test_set = demo_splits(args.seed)
    model, tokenizer = untrained_tiny_moe(args.seed)
    untrained = routing_tables(model, tokenizer, test_set)
    tiny = train_tiny_moe(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model, curve = tiny.model, tiny.curve
    trained_at = time.time() - start
    if args.save:
        tiny.save(args.save)

    baseline = routing_tables(model, tokenizer, test_set)
    usage = pivot_usage(model, tokenizer, train_set)
    middle = middle_layers(router_layers(model))
    steered = {}
    for delta, plan in promotions(usage, [float(d) for d in args.deltas.split(",")]).items():
        table = routing_tables(model, tokenizer, test_set, plan)
        steered[delta] = (table, losses_by_language(model, tokenizer, test_set, plan))
    plain_loss = losses_by_language(model, tokenizer, test_set)

    report = render(
        args, argv, untrained, baseline, steered, plain_loss, usage, middle, curve, trained_at, time.time() - start
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    write_tables(Path(args.out).with_suffix(""), untrained, baseline, steered, plain_loss)
    print(report)


def write_tables(folder: Path, untrained, baseline, steered, plain_loss) -> None:
    """``routing.csv`` (model, setting, layer, language, metric, value) and ``loss.csv`` (setting, language, loss)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"none": (baseline, plain_loss), **{f"promote delta={d:g}": pair for d, pair in steered.items()}}
    routing = [untrained.assign(model="untrained", setting="none")]
    routing += [table.assign(model="trained", setting=setting) for setting, (table, _) in settings.items()]
    columns = ["model", "setting", "layer", "language", "metric", "value"]
    pd.concat(routing, ignore_index=True)[columns].to_csv(folder / "routing.csv", index=False)
    loss = [
        dict(setting=setting, language=lang, loss=value)
        for setting, (_, losses) in settings.items()
        for lang, value in losses.items()
    ]
    pd.DataFrame(loss, columns=["setting", "language", "loss"]).to_csv(folder / "loss.csv", index=False)


def render(args, argv, untrained, baseline, steered, plain_loss, usage, middle, curve, trained_at, total) -> str:
    command = "PYTHONPATH=. python scripts/train_tiny_moe.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    jsd = grid(baseline, "jsd")
    per_layer = pd.DataFrame(
        {
            "untrained jsd": layer_means(untrained, "jsd"),
            "trained jsd": layer_means(baseline, "jsd"),
            "trained jsd_norm": layer_means(baseline, "jsd_norm"),
            "trained topk_jaccard": layer_means(baseline, "topk_jaccard"),
            **{f"jsd, promote delta={d:g}": layer_means(table, "jsd") for d, (table, _) in steered.items()},
        }
    )
    in_middle = lambda table, metric: grid(table, metric).loc[middle].mean(axis=0)  # noqa: E731
    per_language = (
        pd.DataFrame(
            {
                "middle jsd": in_middle(baseline, "jsd"),
                **{f"middle jsd, delta={d:g}": in_middle(table, "jsd") for d, (table, _) in steered.items()},
                "loss": pd.Series(plain_loss),
                **{f"loss, delta={d:g}": pd.Series(losses) for d, (_, losses) in steered.items()},
            }
        )
        .drop(index=PIVOT, errors="ignore")
        .rename_axis("language")
    )
    per_language.loc["mean"] = per_language.mean(axis=0)
    top = {layer: usage[layer].topk(2).indices.tolist() for layer in middle}
    lines = [
        "# Routing in a tiny MoE trained on the demo corpus",
        "",
        *summary(jsd, per_layer, per_language, middle),
        "",
    ]
    lines += [
        f"Command: `{command}` ({total / 60:.1f} min in all, training {trained_at / 60:.1f} min, "
        f"{torch.get_num_threads()} CPU thread(s)).",
        "",
        f"Model: Mixtral-style, {SIZES['num_hidden_layers']} layers, d={SIZES['hidden_size']}, "
        f"{SIZES['num_local_experts']} experts, top-{SIZES['num_experts_per_tok']}, load-balancing loss "
        f"{SIZES['router_aux_loss_coef']}; {args.steps} steps of {args.batch_size} sentences from all 14 languages "
        f"of the demo corpus (CC0), seed {args.seed}. Training loss {curve[0]:.2f} -> "
        f"{sum(curve[-50:]) / len(curve[-50:]):.2f} (mean of the last 50 steps).",
        "",
        "Every number below is in `moe_routing/routing.csv` and `moe_routing/loss.csv`; the figures",
        "`moe_routing/divergence.png` and `moe_routing/promotion.png` are drawn from them (`make figures`).",
        "",
        "Routing is measured on the held-out 20% of the sentences (parallel across languages) as Bandarkar et",
        "al.'s released code computes it: expert importance = per token the top-2 routing weights renormalised,",
        "averaged over the sentence's tokens (the 'total actual weight'); `jsd` = mean Jensen-Shannon divergence",
        "from the English translation (nats, 0..ln 2); `jsd_norm` = per sentence the divergence / (log E - the",
        "pair's mean entropy), then averaged; `topk_jaccard` = overlap of each sentence's 2 most important",
        "experts with its English translation's.",
        "",
        "## Divergence from English per layer and language (trained model)",
        "",
        markdown(jsd),
        "",
        "## Per layer, mean over the 13 non-English languages",
        "",
        markdown(per_layer),
        "",
        f"## Promoting English experts in the middle layers {middle}",
        "",
        f"Steering: `promote_pivot_experts` adds delta to the router logits of the 2 experts English uses most "
        f"on the training split ({top}) in layers {middle}, for every non-English sentence (English unsteered).",
        "Per language: divergence from English averaged over the middle layers, and held-out next-token loss",
        "(the side effect).",
        "",
        markdown(per_language),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
