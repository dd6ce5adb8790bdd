# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Language neurons: where are they, and what do they do?
#
# Two ways to find neurons that belong to one language. LAPE (Tang et al., 2024) counts how often each MLP
# neuron fires (activation > 0) on each language's tokens and keeps the neurons whose firing is concentrated
# on few languages (low entropy). AP experts (Suau et al.; Kojima et al., 2024) rank each neuron by how well
# its sentence-mean activation tells one language from the rest (average precision). The ablation matrix then
# zeroes each language's LAPE neurons and measures every language's next-token loss: if the neurons are the
# language's own, its loss rises most. `XLALIGN_MODEL` picks the model (default: the embedded Gemma 3 270M) and
# `XLALIGN_SENTENCES` the corpus size.

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import pandas as pd

import xlalign as xl

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "160"))
languages = ["eng", "deu", "fra", "rus", "jpn", "hin"]
corpus = xl.load_corpus("demo", langs=languages, max_sentences=n_sentences)
model, tokenizer = xl.load_model(model_spec)
layers = range(1, xl.n_layers(model) + 1)

# %% [markdown]
# LAPE: firing counts per token (BOS excluded, as the released code counts text), streamed, never stored.

# %%
stats = xl.collect_stats(model, tokenizer, corpus, [xl.Site(layer, "mlp_gate") for layer in layers], bins=0)
lape = xl.LAPE().fit(stats).neurons_
lape_counts = lape.count_per_layer()
xl.plots.neurons_per_layer(lape_counts, "LAPE neurons per layer")

# %% [markdown]
# AP experts: the 200 neurons of highest average precision per language, over mean-pooled sentences.

# %%
acts = xl.capture_corpus(model, tokenizer, corpus, [xl.Site(layer, "mlp_act") for layer in layers], pooling="mean")
ap = xl.APExperts(k=200).fit(acts, ["mlp_act"]).neuron_sets_["mlp_act"]
ap_counts = ap.count_per_layer()
xl.plots.neurons_per_layer(ap_counts, "AP experts per layer (k = 200)")

# %%
pd.DataFrame(
    {"LAPE": lape_counts.groupby("language").n_neurons.sum(), "AP": ap_counts.groupby("language").n_neurons.sum()}
)

# %% [markdown]
# The ablation matrix: rows are the language whose LAPE neurons are zeroed, columns the language whose loss is
# measured (on its first 32 sentences), cells the relative change of the loss.

# %%
loss_texts = {lang: corpus.texts(lang)[:32] for lang in languages}
before = {lang: xl.next_token_loss(model, tokenizer, texts) for lang, texts in loss_texts.items()}
rows = []
for zeroed in lape.languages:
    with xl.steer(model, [xl.to_intervention(lape, language=zeroed)]):
        for lang, texts in loss_texts.items():
            after = xl.next_token_loss(model, tokenizer, texts)
            rows.append({"zeroed": zeroed, "evaluated": lang, "change": after / before[lang] - 1})
ablation = pd.DataFrame(rows).pivot(index="zeroed", columns="evaluated", values="change")
ablation = ablation.loc[list(lape.languages), languages]
own_most = {lang: ablation.loc[lang].idxmax() == lang for lang in ablation.index}
figure, axes = plt.subplots(figsize=(5, 4))
image = axes.imshow(ablation.to_numpy(), cmap="magma")
axes.set_xticks(range(len(ablation.columns)), ablation.columns)
axes.set_yticks(range(len(ablation.index)), ablation.index)
axes.set(xlabel="loss measured on", ylabel="neurons zeroed", title="relative loss change")
figure.colorbar(image, ax=axes)
print(f"a language's own loss rises most for {sum(own_most.values())} of {len(own_most)} languages")
ablation.round(3)

# %% [markdown]
# What a language's neurons do to generation: German prompts continued with German's LAPE neurons zeroed.

# %%
prompts = [text[: len(text) // 2] for text in corpus.texts("deu")[:3]]
plain = xl.continuations(model, tokenizer, prompts)
with xl.steer(model, [xl.to_intervention(lape, language="deu")]):
    ablated = xl.continuations(model, tokenizer, prompts)
pd.DataFrame({"prompt": prompts, "plain": plain, "German neurons zeroed": ablated})
