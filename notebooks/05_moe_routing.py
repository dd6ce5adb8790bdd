# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Do languages take different experts than English, and can routing steering bring them closer?
#
# In a mixture-of-experts model a router picks, per token and layer, the top-k experts. Following Bandarkar et
# al., each held-out sentence gets an expert importance per layer (per token the top-k routing weights
# renormalised, averaged over the sentence), compared with its English translation's by Jensen-Shannon
# divergence (`jsd`, nats, 0 to ln 2), entropy-normalised divergence (`jsd_norm`) and the overlap of the two
# most important experts (`topk_jaccard`). Then English's most used experts are promoted in the middle layers,
# and we see what that does to divergence and to the loss.
#
# No pretrained MoE can be installed offline, so the model is a tiny Mixtral-style MoE (6 layers, 8 experts,
# top-2) trained on the demo corpus's training split: loaded from `XLALIGN_TINY_MOE` (a directory written by
# `scripts/train_tiny_moe.py --save DIR`, which trains the full 1000 steps and reports in
# `results/moe_routing.md`) when that is set, else trained here for `XLALIGN_MOE_STEPS` steps (default 200,
# about a minute on one CPU thread: a higher loss, but the routing structure is already there). The notebook
# is about MoE models: `XLALIGN_MODEL` is used when it names one (`random:mixtral`, an MoE directory or hub
# id); the default embedded Gemma 3 270M is dense, so then the tiny MoE is used. `XLALIGN_SENTENCES` caps the
# sentences per language. Last, a random-weight MoE of every family the toolkit supports gets the same table:
# a check that the measurement reads each family's router, and the chance baseline.

# %%
# %matplotlib inline
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

import xlalign as xl
from probes.model import MOE_FAMILIES
from probes.plots.style import legend_columns, paper_figure, series_styles

# The tiny MoE and its routing helpers are research scaffolding in the checkout's scripts/, not in the package.
sys.path.insert(0, str(next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scripts" / "tiny_moe.py").exists())))
from scripts.moe_routing import PIVOT, losses_by_language, pivot_usage, promotions, router_traces, routing_table  # noqa: E402
from scripts.tiny_moe import TinyMoE, demo_splits, train_tiny_moe  # noqa: E402

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "160"))
saved = os.environ.get("XLALIGN_TINY_MOE", "")
steps = int(os.environ.get("XLALIGN_MOE_STEPS", "200"))


def named_moe(spec: str):
    """The model and tokenizer ``spec`` names if it is an MoE model, else None (without loading dense presets)."""
    family = spec.removeprefix("random:")
    if spec == "default" or (spec.startswith("random:") and family not in MOE_FAMILIES):
        return None
    model, tokenizer = xl.load_model(spec)
    return (model, tokenizer) if xl.router_layers(model) else None


chosen = named_moe(model_spec)
if chosen is not None:
    model, tokenizer = chosen
    source = f"{model_spec} (XLALIGN_MODEL)"
else:  # one thread: nearly as fast for these tiny models, and it does not crawl when others share the CPU
    torch.set_num_threads(1)
    from_disk = bool(saved) and Path(saved).is_dir()
    tiny = TinyMoE.load(saved) if from_disk else train_tiny_moe(steps=steps)
    model, tokenizer = tiny.model, tiny.tokenizer
    last = tiny.curve[-20:]
    source = (
        f"the tiny MoE ({'loaded from ' + saved if from_disk else 'trained here'}), {tiny.steps} training "
        f"steps, loss {tiny.curve[0]:.2f} -> {sum(last) / len(last):.2f}"
    )
train, test = demo_splits()
fit, held_out = train.subset(n=n_sentences), test.subset(n=n_sentences)
layers = xl.router_layers(model)
print(f"{source}; routed layers {layers}; {len(held_out.languages)} languages x {len(held_out)} held-out sentences")

# %% [markdown]
# ## Divergence from English per layer and language
#
# One traced pass per language over the held-out sentences (pads excluded), then the three measures against
# English. The table shows `jsd`; low means the language routes its translation through the same experts.

# %%
traces = router_traces(model, tokenizer, held_out)
routing = routing_table(traces)
divergence = routing[routing.metric == "jsd"].pivot(index="layer", columns="language", values="value")
divergence.round(3)

# %%
xl.plots.divergence_heatmap(routing, "jsd", title="routing divergence from English (jsd, held-out sentences)")

# %% [markdown]
# Per layer, averaged over the thirteen languages: the layers where routing is most and least shared.

# %%
per_layer = routing.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean")
per_layer.round(3)

# %% [markdown]
# ## Expert usage per language
#
# The fraction of a language's tokens routed to each expert (the `selected` channel), per layer. Shared
# columns are experts every language uses; a bright cell in one row is an expert one script or language keeps.

# %%
usage = xl.expert_usage(xl.router_matrices(traces, "selected"))
xl.plots.usage_heatmap(usage, title="expert usage per language (fraction of tokens)")

# %% [markdown]
# ## Router steering: promote English's experts in the middle layers
#
# `promote_pivot_experts` adds `delta` to the router logits of the two experts English uses most (fitted on the
# training split) in the middle third of the routed layers, for every language but English. The table gives,
# per language, the divergence averaged over those layers and the held-out next-token loss (the side effect),
# without steering and for each `delta`.

# %%
deltas = (0.5, 1.0, 2.0)
plans = promotions(pivot_usage(model, tokenizer, fit), deltas)
middle = sorted(plans[deltas[0]][0].layers)
settings = {"none": []} | {f"delta={delta:g}": plan for delta, plan in plans.items()}
middle_jsd, loss = {}, {}
for name, plan in settings.items():
    table = routing_table(router_traces(model, tokenizer, held_out, plan)) if plan else routing
    middle_jsd[name] = table[(table.metric == "jsd") & table.layer.isin(middle)].groupby("language").value.mean()
    loss[name] = pd.Series(losses_by_language(model, tokenizer, held_out, plan)).drop(PIVOT)
steering = pd.concat({"middle jsd": pd.DataFrame(middle_jsd), "loss": pd.DataFrame(loss)}, axis=1)
steering = steering.rename_axis("language")
promoted = {layer: experts.tolist() for layer, experts in plans[deltas[0]][0].experts.items()}
print(f"middle layers {middle}; English's top-2 experts there: {promoted}")
steering.round(3)

# %% [markdown]
# Divergence against `delta` per language (left) and what it costs in held-out loss (right). Languages far
# from English move towards it; those that already share English's experts can be pushed past them (English
# itself is not steered), so their divergence may rise with `delta`: the line below the figure names them.


# %%
@paper_figure
def promotion_figure():
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.8), layout="constrained")
    strengths = [0.0, *deltas]
    for language, style in series_styles(list(steering.index)).items():
        left.plot(strengths, steering.loc[language, "middle jsd"], label=language, **style)
        change = steering.loc[language, "loss"] - steering.loc[language, ("loss", "none")]
        right.plot(strengths, change, label=language, **style)
    left.set(
        xlabel="delta (router logit bias)",
        ylabel=f"JSD from English (mean over layers {middle})",
        title="divergence, English's experts promoted",
    )
    right.set(
        xlabel="delta (router logit bias)", ylabel="change of held-out loss (nats)", title="the side effect on the loss"
    )
    right.axhline(0, color="grey", lw=0.8)
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=legend_columns(len(steering)))
    return figure


figure = promotion_figure()
strongest = f"delta={deltas[-1]:g}"
lower = steering.index[steering[("middle jsd", strongest)] < steering[("middle jsd", "none")]]
print(
    f"{strongest}: mean middle jsd {steering[('middle jsd', 'none')].mean():.3f} -> "
    f"{steering[('middle jsd', strongest)].mean():.3f}, lower for {len(lower)} of {len(steering)} languages "
    f"(higher for {', '.join(sorted(set(steering.index) - set(lower))) or 'none'}); mean loss "
    f"{steering[('loss', 'none')].mean():.3f} -> {steering[('loss', strongest)].mean():.3f}"
)

# %% [markdown]
# ## A random MoE of every family: the check and the chance baseline
#
# The same measurement on a tiny random-weight model of each MoE family `random_model` builds (routers differ:
# softmax then top-k, top-k then softmax, sigmoid with selection bias and expert groups, a shared expert, dense
# layers left out). Random routers pick their top-2 by chance, so their divergence is what chance alone gives;
# structure in a trained model is what stands out from it: spread across languages, above all. Chance depends
# on the router too: the tiny DeepSeek-V3 picks its experts within the best of two groups of four, so its
# random top-2 sets overlap more.

# %%
family_tables = {family: routing_table(router_traces(*xl.random_model(family), held_out)) for family in MOE_FAMILIES}
studied = model_spec if chosen is not None else "tiny MoE (trained)"
compared = {studied: routing, **{f"random {family}": table for family, table in family_tables.items()}}
by_language = pd.DataFrame(
    {label: table[table.metric == "jsd"].groupby("language").value.mean() for label, table in compared.items()}
)
chance = pd.DataFrame(
    {
        "routed layers": {label: table.layer.nunique() for label, table in compared.items()},
        "mean jsd": by_language.mean(),
        "jsd range over languages": by_language.max() - by_language.min(),
        "mean topk_jaccard": {
            label: table[table.metric == "topk_jaccard"].value.mean() for label, table in compared.items()
        },
    }
)
chance.round(3)


# %%
@paper_figure
def chance_figure():
    figure, axes = plt.subplots(figsize=(7.0, 2.8), layout="constrained")
    ordered = by_language.sort_values(studied)
    styles = series_styles([studied, *(label for label in ordered if label != studied)])
    for label in ordered:
        axes.plot(ordered.index, ordered[label], label=label, lw=2.5 if label == studied else 1, **styles[label])
    axes.set(
        xlabel="language (ordered by the model's divergence)",
        ylabel="JSD from English (mean over layers)",
        title="routing divergence per language: the model against random routers of every family",
    )
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


figure = chance_figure()
spread = chance["jsd range over languages"]
print(
    f"range of divergence over languages: {studied} {spread[studied]:.3f}, "
    f"random routers {spread.drop(studied).min():.3f} to {spread.drop(studied).max():.3f}"
)
