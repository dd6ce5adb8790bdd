# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Token by token: where do words find their translations?
#
# Sentence-level scores average over tokens. Here we keep every token: trace a few English sentences and their
# German translations, draw the token-by-token similarity at the layer where sentences align best, and read
# word alignments off it with SimAlign's Argmax rule (a pair of tokens is aligned when each is the other's most
# similar token; a pair of words when any of their tokens are), at every layer. `XLALIGN_MODEL` picks the model
# (default: the embedded Gemma 3 270M), `XLALIGN_SENTENCES` how many sentences find the best layer.

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import pandas as pd

import xlalign as xl
from probes.analysis.word_alignment import similarity

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "160"))
source, target = "eng", "deu"
corpus = xl.load_corpus("demo", langs=[source, target], max_sentences=n_sentences)
model, tokenizer = xl.load_model(model_spec)
sites = [xl.Site(layer, "resid") for layer in range(xl.n_layers(model) + 1)]

# %% [markdown]
# The most aligned layer: where German sentences retrieve their English translations best (MEXA breaks ties).

# %%
acts = xl.capture_corpus(model, tokenizer, corpus, sites, pooling="mean")
sentence_level = xl.measure(acts, pivot=source, metrics=["retrieval_top1", "mexa"])
scores = sentence_level.pivot_table(index="layer", columns="metric", values="value")
best_layer = int(scores.sort_values(["retrieval_top1", "mexa"], ascending=False).index[0])
print(f"most aligned layer: {best_layer}")

# %% [markdown]
# A trace keeps every token of every sentence at every layer (BOS included; pads never).

# %%
pairs = list(zip(corpus.texts(source)[:4], corpus.texts(target)[:4]))
traces = {
    lang: xl.trace(model, tokenizer, [pair[i] for pair in pairs], sites) for i, lang in enumerate((source, target))
}


def words_and_tokens(text: str):
    encoded = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    return text.split(), xl.word_of_token(encoded["offset_mapping"], text), tokens


# %%
english, german = pairs[0]
_, english_words, english_tokens = words_and_tokens(english)
_, german_words, german_tokens = words_and_tokens(german)
site = xl.Site(best_layer, "resid")
heat = similarity(traces[source].tokens(site)[0], traces[target].tokens(site)[0])
assert heat.shape == (len(english_tokens), len(german_tokens)), "the trace holds the tokens the tokenizer gives"
figure, axes = plt.subplots(figsize=(0.32 * len(german_tokens) + 2, 0.32 * len(english_tokens) + 1.5))
image = axes.imshow(heat.numpy(), cmap="viridis")
axes.set_xticks(range(len(german_tokens)), german_tokens, rotation=90, fontsize=7)
axes.set_yticks(range(len(english_tokens)), english_tokens, fontsize=7)
axes.set_title(f"layer {best_layer}: token similarity, (cos + 1) / 2")
figure.colorbar(image, ax=axes, shrink=0.8)
figure.tight_layout()

# %% [markdown]
# Word alignments of each pair at every layer (BOS is left out, as SimAlign leaves out its special tokens).

# %%
rows = []
for index, (english, german) in enumerate(pairs):
    english_split, english_words, _ = words_and_tokens(english)
    german_split, german_words, _ = words_and_tokens(german)
    keep_en = [i for i, w in enumerate(english_words) if w >= 0]
    keep_de = [j for j, w in enumerate(german_words) if w >= 0]
    for site in sites:
        english_vectors = traces[source].tokens(site)[index][keep_en]
        german_vectors = traces[target].tokens(site)[index][keep_de]
        aligned = xl.word_alignments(
            english_vectors, german_vectors, [english_words[i] for i in keep_en], [german_words[j] for j in keep_de]
        )
        rows.append(
            {
                "pair": index,
                "layer": site.layer,
                "aligned pairs": len(aligned),
                "English words covered": len({i for i, _ in aligned}) / len(english_split),
                "alignments": " ".join(f"{english_split[i]}-{german_split[j]}" for i, j in aligned),
            }
        )
alignments = pd.DataFrame(rows)
alignments.groupby("layer")[["aligned pairs", "English words covered"]].mean().round(2)

# %%
alignments[(alignments.pair == 0) & (alignments.layer == best_layer)][["alignments"]]
