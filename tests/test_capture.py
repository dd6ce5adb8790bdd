"""Capture: pooling is padding-proof, sites read what they claim, early exit and hook hygiene."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from conftest import TEXTS, tiny
from probes.capture import POOLINGS, batches, capture, pool, record
from probes.models import RANDOM_FAMILIES
from probes.sites import Site, blocks, n_heads, tap

COMPONENTS = ("resid", "attn_out", "mlp_out", "mlp_act", "mlp_gate", "head")


def all_sites(n_layers: int) -> list[Site]:
    return [Site(0, "resid")] + [Site(layer, c) for layer in range(1, n_layers + 1) for c in COMPONENTS]


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_batched_equals_one_by_one_for_every_pooling(family, padding_side):
    model, tokenizer = tiny(family)
    sites = all_sites(len(blocks(model)))
    for pooling in POOLINGS:
        kwargs = dict(pooling=pooling, padding_side=padding_side, progress=False)
        batched = capture(model, tokenizer, TEXTS, sites, batch_size=len(TEXTS), **kwargs)
        single = capture(model, tokenizer, TEXTS, sites, batch_size=1, **kwargs)
        for site in sites:
            assert batched[site].shape[0] == len(TEXTS)
            diff = (batched[site] - single[site]).abs().max().item()
            assert diff <= 1e-5, f"{family} {pooling} {padding_side} {site}: max abs diff {diff}"


def test_pool_reference_values():
    hidden = torch.tensor([[[1.0], [2.0], [4.0], [float("nan")]], [[float("inf")], [3.0], [5.0], [7.0]]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    assert pool(hidden, mask, "mean").flatten().tolist() == pytest.approx([7 / 3, 5.0])
    assert pool(hidden, mask, "weighted").flatten().tolist() == pytest.approx([(1 + 4 + 12) / 6, (3 + 10 + 21) / 6])
    assert pool(hidden, mask, "last").flatten().tolist() == [4.0, 7.0]
    assert pool(hidden, mask, "max").flatten().tolist() == [4.0, 7.0]
    signed = torch.tensor([[[-1.0], [2.0], [0.0], [5.0]], [[9.0], [3.0], [-5.0], [-7.0]]])
    assert pool(signed, mask, "active").flatten().tolist() == pytest.approx([1 / 3, 1 / 3])


def run_with_hidden_states(model, tokenizer, texts):
    """Per-token activations at every site and the model's own hidden states, in one right-padded batch."""
    (batch,) = batches(tokenizer, texts, batch_size=len(texts))
    order = batch.rows.argsort()  # back to the order of texts
    seen: dict[Site, torch.Tensor] = {}
    sites = all_sites(len(blocks(model)))
    with torch.no_grad(), record(model, sites, lambda site, t: seen.__setitem__(site, t.clone())):
        out = model(**batch.model_inputs(model), output_hidden_states=True, output_attentions=True)
    return batch, seen, out


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_resid_equals_output_hidden_states(family):
    model, tokenizer = tiny(family)
    batch, seen, out = run_with_hidden_states(model, tokenizer, TEXTS)
    mask = batch.attention_mask.bool()
    n = len(blocks(model))
    assert len(out.hidden_states) == n + 1
    for layer in range(n):
        torch.testing.assert_close(seen[Site(layer, "resid")][mask], out.hidden_states[layer][mask])
    # The last entry of hidden_states is after the final norm; our resid.n is the block output before it.
    final_norm = model.get_submodule({"bloom": "transformer.ln_f", "gpt2": "transformer.ln_f",
                                      "xglm": "model.layer_norm"}.get(model.config.model_type, "model.norm"))
    torch.testing.assert_close(final_norm(seen[Site(n, "resid")])[mask], out.hidden_states[n][mask])


def reference_mlp(family, block, x):
    """(act(gate) * up, act(gate)) recomputed from the MLP's input ``x`` with the family's own weights."""
    if family == "bloom":
        act = block.mlp.gelu_impl(block.mlp.dense_h_to_4h(x))
        return act, act
    if family == "xglm":
        act = block.activation_fn(block.fc1(x))
        return act, act
    if family == "gpt2":
        act = block.mlp.act(block.mlp.c_fc(x))
        return act, act
    gate = block.mlp.act_fn(block.mlp.gate_proj(x))
    return gate * block.mlp.up_proj(x), gate


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_mlp_act_gate_and_heads_equal_recomputation(family):
    model, tokenizer = tiny(family)
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention probabilities come back only from eager attention
    try:
        (batch,) = batches(tokenizer, TEXTS, batch_size=len(TEXTS))
        mask = batch.attention_mask.bool()
        layer = 2
        block = blocks(model)[layer - 1]
        mlp = block.mlp if hasattr(block, "mlp") else block.fc1
        attention = tap(model, Site(layer, "head"))[0]
        value_proj = {"bloom": "self_attention.query_key_value", "gpt2": "attn.c_attn"}.get(family, "self_attn.v_proj")
        inputs, values = {}, {}
        handles = [
            mlp.register_forward_pre_hook(lambda m, a, kw: inputs.__setitem__("mlp", a[0] if a else kw["hidden_states"]),
                                          with_kwargs=True),
            block.get_submodule(value_proj).register_forward_hook(lambda m, a, o: values.__setitem__("v", o)),
        ]
        seen = {}
        try:
            sites = [Site(layer, "mlp_act"), Site(layer, "mlp_gate"), Site(layer, "head")]
            with torch.no_grad(), record(model, sites, lambda site, t: seen.__setitem__(site, t.clone())):
                out = model(**batch.model_inputs(model), output_attentions=True)
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            act, gate = reference_mlp(family, block, inputs["mlp"])
        torch.testing.assert_close(seen[Site(layer, "mlp_act")][mask], act[mask])
        torch.testing.assert_close(seen[Site(layer, "mlp_gate")][mask], gate[mask])

        heads = n_heads(model)
        v = values["v"]
        if family == "bloom":  # fused (heads, 3, head_dim) layout
            v = rearrange(v, "b t (h three d) -> b h t three d", h=heads, three=3)[..., 2, :]
        elif family == "gpt2":
            v = rearrange(v.split(model.config.n_embd, dim=-1)[2], "b t (h d) -> b h t d", h=heads)
        else:
            v = rearrange(v, "b t (g d) -> b g t d", d=seen[Site(layer, "head")].shape[-1] // heads)
            v = v.repeat_interleave(heads // v.shape[1], dim=1)
        probs = out.attentions[layer - 1]
        expected = rearrange(probs @ v, "b h t d -> b t (h d)")
        torch.testing.assert_close(seen[Site(layer, "head")][mask], expected[mask], atol=1e-5, rtol=1e-4)
    finally:
        model.set_attn_implementation(original)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_early_exit_is_identical_and_runs_fewer_layers(family):
    model, tokenizer = tiny(family)
    sites = [Site(1, "resid"), Site(2, "mlp_act")]
    calls = []
    handles = [block.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, block in enumerate(blocks(model))]
    try:
        early = capture(model, tokenizer, TEXTS, sites, batch_size=4, progress=False)
        ran = sorted(set(calls))
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1], f"blocks that ran: {ran}"
    # Reference: the same sites read from a full forward pass.
    full = {}
    (batch,) = batches(tokenizer, TEXTS, batch_size=len(TEXTS))
    with torch.no_grad(), record(model, sites, lambda site, t: full.__setitem__(site, t.clone())):
        model(**batch.model_inputs(model))
    mask = batch.token_mask
    for site in sites:
        expected = torch.empty_like(early[site])
        expected[batch.rows] = pool(full[site], mask, "mean")
        torch.testing.assert_close(early[site], expected, atol=1e-6, rtol=1e-5)


def test_no_hooks_remain_after_an_exception():
    model, tokenizer = tiny("llama")
    before = hook_count(model)

    def explode(site, values, rows):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(model, tokenizer, TEXTS, all_sites(2), progress=False, on_tokens=explode)
    assert hook_count(model) == before
    with pytest.raises(KeyboardInterrupt):
        with record(model, all_sites(2), lambda *_: None):
            raise KeyboardInterrupt
    assert hook_count(model) == before


def test_token_callback_sees_exactly_the_non_pad_tokens():
    model, tokenizer = tiny("qwen2")
    site = Site(3, "mlp_gate")
    got = []
    pooled = capture(model, tokenizer, TEXTS, [site], batch_size=3, padding_side="left", progress=False,
                     on_tokens=lambda s, values, rows: got.append((values, rows)))
    values = torch.cat([v for v, _ in got])
    rows = torch.cat([r for _, r in got])
    lengths = [len(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    assert torch.bincount(rows, minlength=len(TEXTS)).tolist() == lengths
    for i in range(len(TEXTS)):  # the per-token values average to the pooled mean
        torch.testing.assert_close(values[rows == i].mean(0), pooled[site][i], atol=1e-6, rtol=1e-5)
