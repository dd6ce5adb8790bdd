"""INCLINE's application against a transcription of its released code (intervention_llama.py: get_out on the
clean prompt, mlp_val + sigma * dire at every layer's last prompt token, patched by nethook only while the
forward pass is the prompt's), with raw torch hooks on the model's MLP modules."""

from __future__ import annotations

import pytest
import torch

from conftest import TEXTS, tiny
from probes.artifacts import LinearMap
from probes.capture import Tokenization, batches, record
from probes.model import Site, model_identity, n_layers
from steer.apply import steer
from steer.incline import SIGMAS, incline
from steer.interventions import ApplyMap

PROMPTS = TEXTS[:3]
NEW_TOKENS = 6


def random_map(model) -> LinearMap:
    width = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    matrices = {layer: torch.randn(width, width, generator=g) / width**0.5 for layer in range(1, n_layers(model) + 1)}
    return LinearMap(matrices, "mlp_out", "incline", "deu", "eng", {}, model_identity(model))


def reference_generation(model, tokenizer, prompt: str, fitted: LinearMap, sigma: float, sign: float, new_tokens=NEW_TOKENS):
    """One prompt, no padding: clean MLP outputs of the last token, targets, then greedy generation with the
    last prompt token overwritten at every layer while the input is the whole prompt."""
    mlps = [layer.mlp for layer in model.model.layers]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    clean = {}
    hooks = [mlp.register_forward_hook(lambda m, a, out, i=i: clean.__setitem__(i, out[0, -1].clone()))
             for i, mlp in enumerate(mlps)]  # fmt: skip
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    targets = {i: clean[i] + sign * sigma * (clean[i] @ fitted.matrices[i + 1]) for i in clean}

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


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_incline_edits_every_layer_from_the_clean_pass_and_generates_as_the_released_code(sign):
    model, tokenizer = tiny("llama")
    fitted, sigma = random_map(model), 0.5
    plan = [incline(model, tokenizer, PROMPTS, fitted, sigma, sign=sign)]
    (batch,) = batches(tokenizer, PROMPTS, Tokenization(batch_size=3), padding_side="left")
    order = batch.rows.argsort()
    ids, mask = batch.input_ids[order], batch.attention_mask[order]
    sites = [Site(layer, "mlp_out") for layer in fitted.matrices]
    with torch.no_grad(), steer(model, plan), record(model, sites) as seen:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    for row, prompt in enumerate(PROMPTS):
        expected, targets = reference_generation(model, tokenizer, prompt, fitted, sigma, sign)
        assert torch.equal(out[row, ids.shape[1] :], expected), f"row {row}"
        for site in sites:  # the steered prompt's last token holds c_l + sign * sigma * c_l W_l of the clean pass
            last = int(mask[row].sum()) - 1
            torch.testing.assert_close(seen.tokens(site)[row][last], targets[site.layer - 1], atol=1e-5, rtol=1e-5)


def test_incline_does_not_compound_like_a_map_at_every_layer():
    """An ApplyMap at every layer maps the already-steered value, so its last-token norm outgrows INCLINE's."""
    model, tokenizer = tiny("llama")
    fitted, sigma = random_map(model), 0.9
    last = Site(n_layers(model), "mlp_out")
    norms = {}
    plans = {
        "incline": [incline(model, tokenizer, PROMPTS[:1], fitted, sigma)],
        "every layer": [(ApplyMap(fitted.matrices, sigma, "code", "mlp_out"), incline(model, tokenizer, PROMPTS[:1],
                                                                                      fitted, sigma)[1])],
    }  # fmt: skip
    for name, plan in plans.items():
        with torch.no_grad(), steer(model, plan), record(model, [last]) as seen:
            model(**tokenizer(PROMPTS[:1], return_tensors="pt"))
        norms[name] = float(seen.tokens(last)[0][-1].norm())
    assert norms["every layer"] != pytest.approx(norms["incline"], rel=1e-3)
    assert SIGMAS[0] == -1.0 and SIGMAS[-1] == 1.0 and len(SIGMAS) == 21 and -0.3 in SIGMAS and -0.2 in SIGMAS
