"""Capture: pooling is padding-proof, sites read what they claim, early exit and hook hygiene; the per-token
view (trace, record) equals the model's own hidden states, also inside generate."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from conftest import TEXTS, hook_count, tiny
from probes.capture import POOLINGS, Tokenization, TokenizationError, batches, capture, pool, record, trace, watch
from probes.model import RANDOM_FAMILIES, Site, SiteError, blocks, final_norm, n_heads

COMPONENTS = ("resid", "attn_out", "mlp_out", "mlp_act", "mlp_gate", "head")


def all_sites(n_layers: int) -> list[Site]:
    return [Site(0, "resid")] + [Site(layer, c) for layer in range(1, n_layers + 1) for c in COMPONENTS]


def test_one_tokenization_for_capture_loss_and_statistics():
    from probes.capture import collect_stats
    from probes.data import ParallelCorpus
    from steer.evaluate import next_token_loss

    model, tokenizer = tiny("llama")
    config = Tokenization(batch_size=2, max_length=5, exclude_bos=True)
    long_texts = [text for text in TEXTS if len(tokenizer(text)["input_ids"]) > 5]
    rows = []
    with pytest.warns(UserWarning, match="longer than max_length=5"):
        capture(
            model,
            tokenizer,
            long_texts,
            [Site(1, "mlp_gate")],
            pooling=None,
            tokenization=config,
            on_tokens=lambda site, values, r: rows.append(r),
        )
    assert torch.bincount(torch.cat(rows)).tolist() == [4] * len(long_texts), "5 tokens, BOS not counted"
    corpus = ParallelCorpus([str(i) for i in range(len(long_texts))], {"eng": long_texts})
    with pytest.warns(UserWarning):
        stats = collect_stats(model, tokenizer, corpus, [Site(1, "mlp_gate")], bins=0, tokenization=config)
    assert stats.count(Site(1, "mlp_gate"), "eng") == 4 * len(long_texts)
    with pytest.warns(UserWarning):
        loss = next_token_loss(model, tokenizer, long_texts, tokenization=config)
    total = 0.0
    with torch.no_grad():
        for text in long_texts:
            ids = torch.tensor([tokenizer(text)["input_ids"][:5]])
            total += model(input_ids=ids, labels=ids).loss.item() * 4
    assert loss == pytest.approx(total / (4 * len(long_texts)), rel=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_batched_equals_one_by_one_for_every_pooling(family, padding_side):
    model, tokenizer = tiny(family)
    sites = all_sites(len(blocks(model)))
    for pooling in POOLINGS:
        batched = capture(
            model,
            tokenizer,
            TEXTS,
            sites,
            pooling=pooling,
            tokenization=Tokenization(batch_size=len(TEXTS), padding_side=padding_side),
        )
        single = capture(
            model,
            tokenizer,
            TEXTS,
            sites,
            pooling=pooling,
            tokenization=Tokenization(batch_size=1, padding_side=padding_side),
        )
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


def hidden_states_one_by_one(model, tokenizer, texts) -> list[tuple]:
    """Each text run alone (no padding at all): the model's own hidden states, the last one after the final norm."""
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]), output_hidden_states=True).hidden_states
            for text in texts
        ]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_trace_tokens_equal_output_hidden_states_per_text(family, padding_side):
    model, tokenizer = tiny(family)
    n = len(blocks(model))
    sites = [Site(layer, "resid") for layer in range(n + 1)]
    rec = trace(model, tokenizer, TEXTS, sites, tokenization=Tokenization(batch_size=3, padding_side=padding_side))
    assert len(rec) == len(TEXTS) and rec.texts == tuple(TEXTS)
    for i, hidden in enumerate(hidden_states_one_by_one(model, tokenizer, TEXTS)):
        assert rec.ids[i].tolist() == tokenizer(TEXTS[i])["input_ids"], "pads dropped, text order kept"
        for layer in range(n):
            torch.testing.assert_close(rec.tokens(sites[layer])[i], hidden[layer][0], atol=1e-5, rtol=1e-4)
        # The last entry of hidden_states is after the final norm; our resid.n is the block output before it.
        with torch.no_grad():
            torch.testing.assert_close(final_norm(model)(rec.tokens(sites[n])[i]), hidden[n][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_record_inside_generate_keeps_prompt_and_every_decode_step(use_cache):
    model, tokenizer = tiny("llama")
    texts = TEXTS[:3]
    (batch,) = batches(tokenizer, texts, Tokenization(batch_size=3), padding_side="left")
    site = Site(3, "resid")
    with torch.no_grad(), record(model, [site]) as rec:
        generated = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
    width = batch.input_ids.shape[1]
    for row in range(3):
        prompt = batch.input_ids[row][batch.attention_mask[row].bool()]
        sequence = torch.cat([prompt, generated[row, width:-1]])  # the last token is produced, never fed
        assert torch.equal(rec.ids[row], sequence)
        assert rec.decode_steps[row].tolist() == [0] * len(prompt) + [1, 2, 3]
        with torch.no_grad():
            expected = model(input_ids=sequence[None], output_hidden_states=True).hidden_states[3][0]
        torch.testing.assert_close(rec.tokens(site)[row], expected, atol=1e-5, rtol=1e-4)
    assert "generate" not in vars(model), "the generate wrapper is gone once the block closes"


def run_with_hidden_states(model, tokenizer, texts):
    """Per-token activations at every site and the model's own hidden states, in one right-padded batch."""
    (batch,) = batches(tokenizer, texts, Tokenization(batch_size=len(texts)))
    seen: dict[Site, torch.Tensor] = {}
    sites = all_sites(len(blocks(model)))
    with torch.no_grad(), watch(model, sites, lambda site, t, _ctx: seen.__setitem__(site, t.clone())):
        out = model(**batch.model_inputs(model), output_hidden_states=True, output_attentions=True)
    return batch, seen, out


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
        (batch,) = batches(tokenizer, TEXTS, Tokenization(batch_size=len(TEXTS)))
        mask = batch.attention_mask.bool()
        layer = 2
        block = blocks(model)[layer - 1]
        mlp = block.mlp if hasattr(block, "mlp") else block.fc1
        value_proj = {"bloom": "self_attention.query_key_value", "gpt2": "attn.c_attn"}.get(family, "self_attn.v_proj")
        inputs, values = {}, {}
        handles = [
            mlp.register_forward_pre_hook(
                lambda m, a, kw: inputs.__setitem__("mlp", a[0] if a else kw["hidden_states"]), with_kwargs=True
            ),
            block.get_submodule(value_proj).register_forward_hook(lambda m, a, o: values.__setitem__("v", o)),
        ]
        seen = {}
        try:
            sites = [Site(layer, "mlp_act"), Site(layer, "mlp_gate"), Site(layer, "head")]
            with torch.no_grad(), watch(model, sites, lambda site, t, _ctx: seen.__setitem__(site, t.clone())):
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
            v = rearrange(v, "b t (g d) -> b g t d", d=seen[Site(layer, "head")].shape[-1])
            v = v.repeat_interleave(heads // v.shape[1], dim=1)
        probs = out.attentions[layer - 1]
        expected = rearrange(probs @ v, "b h t d -> b t h d")
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
        early = capture(model, tokenizer, TEXTS, sites, tokenization=Tokenization(batch_size=4))
        ran = sorted(set(calls))
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1], f"blocks that ran: {ran}"
    # Reference: the same sites read from a full forward pass.
    full = {}
    (batch,) = batches(tokenizer, TEXTS, Tokenization(batch_size=len(TEXTS)))
    with torch.no_grad(), watch(model, sites, lambda site, t, _ctx: full.__setitem__(site, t.clone())):
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
        capture(model, tokenizer, TEXTS, all_sites(2), on_tokens=explode)
    assert hook_count(model) == before
    with pytest.raises(KeyboardInterrupt):
        with record(model, all_sites(2)):
            raise KeyboardInterrupt
    assert hook_count(model) == before and "generate" not in vars(model)


def test_record_is_read_only_and_names_the_site():
    model, tokenizer = tiny("llama")
    (batch,) = batches(tokenizer, TEXTS[:2], Tokenization())
    before = hook_count(model)
    with pytest.raises(SiteError, match="resid.2: a read-only hook returned a Tensor.*steer"):
        with torch.no_grad(), watch(model, [Site(2, "resid")], lambda site, x, ctx: x * 2):
            model(**batch.model_inputs(model))
    assert hook_count(model) == before


def test_bad_capture_input_is_a_clear_error():
    model, tokenizer = tiny("llama")
    with pytest.raises(TokenizationError, match="no texts"):
        capture(model, tokenizer, [], [Site(1, "resid")])
    with pytest.raises(TokenizationError, match="one string"):
        capture(model, tokenizer, "a text", [Site(1, "resid")])
    with pytest.raises(SiteError, match="at least one site"):
        capture(model, tokenizer, TEXTS, [])
    with pytest.raises(SiteError, match="the model has 4 blocks"):
        capture(model, tokenizer, TEXTS, [Site(9, "resid")])


def test_token_callback_sees_exactly_the_non_pad_tokens_and_the_bos_only_when_asked():
    model, tokenizer = tiny("llama")  # its tokenizer adds a BOS
    site = Site(3, "mlp_gate")
    ids = tokenizer(TEXTS)["input_ids"]
    assert all(row[0] == tokenizer.bos_token_id for row in ids)
    for count_bos in (True, False):
        got = []
        pooled = capture(
            model,
            tokenizer,
            TEXTS,
            [site],
            tokenization=Tokenization(batch_size=3, padding_side="left"),
            on_tokens=lambda s, values, rows: got.append((values, rows)),
            count_bos=count_bos,
        )
        values = torch.cat([v for v, _ in got])
        rows = torch.cat([r for _, r in got])
        assert torch.bincount(rows, minlength=len(TEXTS)).tolist() == [len(row) - (not count_bos) for row in ids]
        if count_bos:  # the per-token values average to the pooled mean
            for i in range(len(TEXTS)):
                torch.testing.assert_close(values[rows == i].mean(0), pooled[site][i], atol=1e-6, rtol=1e-5)
