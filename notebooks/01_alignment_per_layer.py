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
# retrieval top-1) and the stricter MEXA score. Set `XLALIGN_MODEL=default` for the embedded Gemma 3 270M
# (the test suite runs this notebook on a tiny random model).

# %%
import os

import pandas as pd

from probes import Site, load_corpus, load_model
from probes.capture import capture
from probes.metrics import mexa, retrieval_top1
from probes.plots import alignment_per_layer
from probes.sites import n_layers

model_spec = os.environ.get("XLALIGN_MODEL", "default")
corpus = load_corpus("demo", langs=["eng", "deu", "rus", "jpn", "hin"], max_sentences=60)
model, tokenizer = load_model(model_spec)
sites = [Site(layer, "resid") for layer in range(n_layers(model) + 1)]

# %%
pooled = {lang: capture(model, tokenizer, corpus.texts(lang), sites, pooling="mean", progress=False)
          for lang in corpus.languages}
rows = [
    (site.layer, lang, name, fn(pooled["eng"][site], pooled[lang][site]))
    for site in sites
    for lang in corpus.languages if lang != "eng"
    for name, fn in (("retrieval_top1", retrieval_top1), ("mexa", mexa))
]
table = pd.DataFrame(rows, columns=["layer", "language", "metric", "value"])
table.pivot_table(index="layer", columns=["metric", "language"], values="value").round(2)

# %%
figure = alignment_per_layer(table, title=f"{model_spec}: alignment with English")
figure
