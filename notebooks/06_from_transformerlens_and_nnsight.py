# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # From TransformerLens and from nnsight
#
# A researcher who already holds a TransformerLens `TransformerBridge` or an nnsight model passes it to xlalign
# as it is: the capture reads the bridge's hook points or runs nnsight traces, the steering edits through them,
# and the results come back as the same tables. This notebook runs one capture and one steered generation
# three ways and shows they agree. `XLALIGN_MODEL` picks the model (default: the embedded Gemma 3 270M) and
# `XLALIGN_SENTENCES` the corpus size.

# %%
# %matplotlib inline
import os

import nnsight
import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

import xlalign as xl

model_spec = os.environ.get("XLALIGN_MODEL", "default")
n_sentences = int(os.environ.get("XLALIGN_SENTENCES", "40"))
corpus = xl.load_corpus("demo", langs=["eng", "deu", "jpn"], max_sentences=n_sentences)
model, tokenizer = xl.load_model(model_spec)
layers = xl.n_layers(model)
sites = [xl.Site(layer, "resid") for layer in range(layers + 1)]

# %% [markdown]
# The peers' own objects, made as their users make them. Both change the model they wrap (the bridge switches
# attention to eager and wraps the layers; nnsight replaces `forward` on every module), so each gets a copy of
# ours. `xl.transformer_bridge(model, tokenizer)` and `xl.nnsight_model(model, tokenizer)` do the same for you.

# %%
bridge = xl.transformer_bridge(model, tokenizer)
lm = xl.nnsight_model(model, tokenizer)
print(
    f"{type(bridge).__name__} (a TransformerBridge: {isinstance(bridge, TransformerBridge)}), "
    f"{type(lm).__name__} (an nnsight model: {isinstance(lm, nnsight.NNsight)})"
)
networks = {"hf": model, "tl": bridge, "nnsight": lm}

# %% [markdown]
# The same capture through each: MEXA and retrieval per layer, and the largest difference from the hf backend.

# %%
tables = {
    name: xl.measure(xl.capture_corpus(network, tokenizer, corpus, sites, pooling="mean"), pivot="eng")
    for name, network in networks.items()
}
agreement = pd.DataFrame(
    {name: [(table.value - tables["hf"].value).abs().max()] for name, table in tables.items()},
    index=["max |difference| from hf"],
)
agreement

# %%
tables["tl"].pivot_table(index="layer", columns=["metric", "language"], values="value").round(3)

# %% [markdown]
# One steering vector (English minus Japanese, mean residual at the middle layer) added inside `generate`,
# through each backend: the greedy continuations are the same tokens.

# %%
acts = xl.capture_corpus(model, tokenizer, corpus, [xl.Site(layers // 2, "resid")], pooling="mean")
middle = xl.Site(layers // 2, "resid")
direction = acts.get(middle, "eng").mean(0) - acts.get(middle, "jpn").mean(0)
plan = [xl.AddVector({layers // 2: direction}, alpha=1.0)]
prompts = tokenizer(corpus.texts("jpn")[:3], return_tensors="pt", padding=True, padding_side="left")
continuations = {}
for name, network in networks.items():
    with xl.steer(network, plan), torch.no_grad():
        generated = xl.generate(
            network, **prompts, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    continuations[name] = tokenizer.batch_decode(
        generated[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True
    )
pd.DataFrame(continuations)
