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
# Run the same sentences in several languages through a model, pool each layer's residual stream per
# sentence, and measure how well each language's sentences find their English translations (bitext
# retrieval top-1) and the stricter MEXA score. `XLALIGN_MODEL` picks the model (default: the embedded
# Gemma 3 270M) and `XLALIGN_SENTENCES` the corpus size (the test suite runs this small, on a tiny random model).

# %%
import os

import xlalign as xl

model_spec = os.environ.get("XLALIGN_MODEL", "default")
corpus = xl.load_corpus("demo", langs=["eng", "deu", "rus", "jpn", "hin"],
                        max_sentences=int(os.environ.get("XLALIGN_SENTENCES", "60")))
model, tokenizer = xl.load_model(model_spec)
sites = [xl.Site(layer, "resid") for layer in range(xl.n_layers(model) + 1)]

# %% [markdown]
# One forward pass per language; each layer's residual stream is mean-pooled over every sentence's tokens.

# %%
acts = xl.capture_corpus(model, tokenizer, corpus, sites, pooling="mean")
table = xl.measure(acts, pivot="eng", metrics=["retrieval_top1", "mexa"])
table.pivot_table(index="layer", columns=["metric", "language"], values="value").round(2)

# %%
figure = xl.plots.alignment_per_layer(table, title=f"{model_spec}: alignment with English")
figure
