"""INCLINE applied by hand, as its released code applies it (intervention_llama.py: get_out on the clean prompt,
mlp_val + sigma * dire at every layer's last prompt token, patched by nethook only while the forward pass is the
prompt's), with raw torch hooks on the model's MLP modules: the reference the INCLINE tests compare with."""

from __future__ import annotations

import torch

from probes.artifacts import LinearMap
from probes.model import model_identity, n_layers

NEW_TOKENS = 6


def random_map(model) -> LinearMap:
    width = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    matrices = {layer: torch.randn(width, width, generator=g) / width**0.5 for layer in range(1, n_layers(model) + 1)}
    return LinearMap(matrices, "mlp_out", "incline", "deu", "eng", {}, model_identity(model))


def reference_generation(
    model, tokenizer, prompt: str, fitted: LinearMap, sigma: float, sign: float, new_tokens=NEW_TOKENS, mode="code"
):
    """One prompt, no padding: clean MLP outputs of the last token, targets, then greedy generation with the
    last prompt token overwritten at every layer while the input is the whole prompt."""
    mlps = [layer.mlp for layer in model.model.layers]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    clean = {}
    hooks = [
        mlp.register_forward_hook(lambda m, a, out, i=i: clean.__setitem__(i, out[0, -1].clone()))
        for i, mlp in enumerate(mlps)
    ]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    if mode == "code":  # mlp_val + sigma * dire, dire = (+/-) mlp_val W
        targets = {i: clean[i] + sign * sigma * (clean[i] @ fitted.matrices[i + 1]) for i in clean}
    else:  # docs/methods.md's interpolation between the clean value and its image
        targets = {i: (1 - sigma) * clean[i] + sigma * (clean[i] @ fitted.matrices[i + 1]) for i in clean}

    def patch(i):
        def hook(module, args, out):
            if out.shape[1] == ids.shape[1]:  # the prompt's forward pass, not a decode step
                out = out.clone()
                out[0, -1] = targets[i]
                return out

        return hook

    hooks = [mlp.register_forward_hook(patch(i)) for i, mlp in enumerate(mlps)]
    try:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        for hook in hooks:
            hook.remove()
    return out[0, ids.shape[1] :], targets
