# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Steering inside `generate`: does alignment rise, and what does it cost?
#
# Shift vectors (the mean difference between English and a language at one layer), CLAIM attention heads and
# Procrustes maps are fitted on training sentences and applied inside `generate` on held-out ones. For each
# setting the closed loop measures alignment with English per layer with the intervention off and on (with a
# bootstrap interval of the change), the loss on the language's own text, and whether greedy continuations stay
# in the language (fidelity). `XLALIGN_MODEL` picks the model (default: the embedded Gemma 3 270M),
# `XLALIGN_SENTENCES` the corpus size.

# %%
# %matplotlib inline
import os

import ipywidgets as widgets
import pandas as pd
from IPython.display import display

import xlalign as xl

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "160"))
corpus = xl.load_corpus("demo", langs=["eng", "deu", "jpn", "hin"], max_sentences=n_sentences)
model, tokenizer = xl.load_model(model_spec)

# %% [markdown]
# The closed loop in memory (`xl.evaluate_methods`, what `xlalign evaluate` runs and writes): fit on 80% of the
# sentences, evaluate on the other 20%; it returns the tables.

# %%
loop = xl.evaluate_methods(model, tokenizer, corpus, methods=["shift", "claim", "procrustes"], n_loss=16, n_prompts=4)
evaluation = loop.evaluation
loop.best

# %%
xl.summary.before_after(evaluation)

# %% [markdown]
# The Pareto view: alignment gain (MEXA, mean over the layers from the edited one) against the relative rise
# of the loss on the language, one point per setting, averaged over languages.

# %%
xl.summary.pareto(evaluation)

# %%
fidelity = evaluation[evaluation.metric == "line_fidelity"].pivot_table(
    index=["method", "setting"], columns="language", values="on"
)
fidelity.round(2)

# %% [markdown]
# Continuations side by side, and a strength slider: a Japanese shift vector at the middle layer, fitted on
# the training sentences, added with strength `alpha`. Move the slider to regenerate (headless, the cell below
# shows `alpha = 1`).

# %%
train, test = corpus.split(test_fraction=0.2)
middle = xl.n_layers(model) // 2
acts = xl.capture_corpus(model, tokenizer, train, [xl.Site(middle, "resid")])
shift = xl.fit_shift(acts, "jpn", layers=[middle])
prompts = test.texts("jpn")[:3]


def regenerate(alpha: float = 1.0) -> pd.DataFrame:
    with xl.steer(model, [xl.to_intervention(shift, strength=alpha)]):
        steered = xl.continuations(model, tokenizer, prompts)
    plain = xl.continuations(model, tokenizer, prompts)
    return pd.DataFrame({"prompt": prompts, "plain": plain, f"alpha={alpha}": steered})


slider = widgets.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.5, description="alpha")
display(widgets.interactive(lambda alpha: display(regenerate(alpha)), alpha=slider))
side_by_side = regenerate(1.0)
side_by_side
