# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Where in the model do languages meet?
#
# The same sentences in thirteen languages and English go through a model; each layer's output
# (`output_hidden_states`, as MEXA reads it) is pooled per sentence with MEXA's position weights, and four
# measures say how close each language is to English at each layer: bitext retrieval top-1, MEXA, the strong
# alignment mAP (every language's sentences pooled in one search) and linear CKA. Each comes with a 95%
# bootstrap interval over sentences. `XLALIGN_MODEL` picks the model (default: the embedded Gemma 3 270M) and
# `XLALIGN_SENTENCES` the number of sentences (the test suite runs this small, on a tiny random model).

# %%
# %matplotlib inline
import os

import pandas as pd

import xlalign as xl

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "160"))
corpus = xl.load_corpus("demo", max_sentences=n_sentences)
model, tokenizer = xl.load_model(model_spec)
sites = [xl.Site(layer, "hidden") for layer in range(xl.n_layers(model) + 1)]
print(f"{model_spec}: {xl.n_layers(model)} layers; {len(corpus.languages)} languages x {len(corpus)} sentences")

# %% [markdown]
# One pass per language (batched, padding never counted); the pooled vectors stay in memory as an
# `Activations` object.

# %%
acts = xl.capture_corpus(model, tokenizer, corpus, sites, pooling="weighted")
table = xl.measure(acts, pivot="eng", metrics=["retrieval_top1", "mexa", "strong_map", "cka"], ci=True)
per_layer = table.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean")
per_layer.round(3)

# %% [markdown]
# Averaged over the languages, where is each measure highest? Retrieval and MEXA usually peak in the middle
# layers and fall at the top, where the model turns back to predicting tokens of one language.

# %%
best_layers = per_layer.idxmax().rename("most aligned layer").to_frame()
best_layers["value there"] = per_layer.max()
best_layers

# %%
figure = xl.plots.alignment_per_layer(table, ("retrieval_top1", "mexa"), title=f"{model_spec}: alignment with English")
figure

# %% [markdown]
# Script and family. Languages written in the Latin script share many tokens with English; the others share
# none. The table groups the mean MEXA over layers by script and by family.

# %%
LANGUAGES = pd.DataFrame.from_records(
    [
        ("deu", "Latin", "Indo-European (Germanic)"),
        ("fra", "Latin", "Indo-European (Romance)"),
        ("spa", "Latin", "Indo-European (Romance)"),
        ("tur", "Latin", "Turkic"),
        ("ind", "Latin", "Austronesian"),
        ("rus", "Cyrillic", "Indo-European (Slavic)"),
        ("ell", "Greek", "Indo-European (Hellenic)"),
        ("arb", "Arabic", "Afro-Asiatic (Semitic)"),
        ("heb", "Hebrew", "Afro-Asiatic (Semitic)"),
        ("hin", "Devanagari", "Indo-European (Indo-Aryan)"),
        ("zho-CN", "Han", "Sino-Tibetan"),
        ("jpn", "Japanese", "Japonic"),
        ("kor", "Hangul", "Koreanic"),
    ],
    columns=["language", "script", "family"],
).set_index("language")
mexa_by_language = table[table.metric == "mexa"].groupby("language")["value"].mean().rename("mean MEXA")
by_language = LANGUAGES.join(mexa_by_language).sort_values("mean MEXA", ascending=False)
by_script = by_language.assign(latin=by_language.script.eq("Latin")).groupby("latin")["mean MEXA"].mean()
by_language

# %%
by_script.rename(index={True: "Latin script", False: "other scripts"}).round(3)
