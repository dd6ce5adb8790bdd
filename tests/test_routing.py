"""MoE routing: traces are what the model used, padding-proof, store-compatible; router steering provably
changes routing and is cache-proof; routing metrics match hand computations."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import TEXTS, hook_count, prompt_batch, tiny
from probes.analysis import (
    expert_set_overlap,
    expert_usage,
    jsd,
    language_experts,
    measure_routing,
    routing_divergence,
    set_overlap,
    universal_experts,
)
from probes.capture import (
    ActivationStore,
    Tokenization,
    batches,
    capture,
    capture_corpus,
    capture_to_store,
    trace_batches,
)
from probes.capture import trace_router
from probes.capture import watch
from probes.data import demo_corpus
from probes.model import MOE_FAMILIES, RULES, HookSet, Site, SiteError, load_model, locate, model_identity
from probes.model import router_layers, width
from probes.model.hooks import first_tensor
from probes.model.moe import observe_router
from probes.plots import divergence_heatmap, usage_heatmap
from steer.apply import steer
from steer.interventions import EditContext, InterventionError
from steer.router import BanExperts, ForceExperts, RouterBias, middle_layers, promote_pivot_experts
from steer.schedule import Schedule


def points(model):
    return {layer: locate(model, Site(layer, "router")) for layer in router_layers(model)}


@contextmanager
def routing_of(model):
    """{layer: Routing} of the last forward pass inside the block (the gate's decision, after any edit)."""
    seen = {}
    with HookSet() as hooks:
        for layer, point in points(model).items():
            observe_router(hooks, point, lambda routing, layer=layer: seen.__setitem__(layer, routing))
        yield seen


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_rules_reproduce_every_gate_bit_for_bit(family):
    """The top-k that steering recomputes is exactly what each family's gate computes."""
    model, tokenizer = tiny(family)
    ids, mask = prompt_batch(tokenizer, TEXTS, side="right")
    seen = []
    handles = [
        point.gate.register_forward_hook(lambda m, args, out, p=point: seen.append((p, m, args[0], out)))
        for point in points(model).values()
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(router_layers(model))
    for point, gate, hidden, (logits, weights, top) in seen:  # logits are the raw linear output, no softmax
        flat = hidden.reshape(-1, gate.weight.shape[1])
        raw = torch.nn.functional.linear(flat, gate.weight, getattr(gate, "bias", None))
        torch.testing.assert_close(logits, raw, msg=f"{family} router.{point.layer}: logits are not raw")
        new_weights, new_ids = RULES[point.spec.rule](gate, logits)
        assert torch.equal(new_ids, top), f"{family} router.{point.layer}"
        assert torch.equal(new_weights.to(weights.dtype), weights), f"{family} router.{point.layer}"


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_trace_reproduces_the_moe_block_output(family):
    """Re-running the block's experts with the traced top-k ids and weights gives the block's output."""
    model, tokenizer = tiny(family)
    (batch,) = batches(tokenizer, TEXTS, Tokenization(batch_size=len(TEXTS)))
    io = {}
    handles = []
    for layer, point in points(model).items():
        handles.append(
            point.block.register_forward_hook(
                lambda _m, args, out, layer=layer: io.__setitem__(layer, (args[0], first_tensor(out)))
            )
        )
    try:
        trace = trace_batches(model, [batch])
    finally:
        for handle in handles:
            handle.remove()
    rows = batch.rows[:, None].expand(batch.token_mask.shape)[batch.token_mask]
    positions = (batch.attention_mask.cumsum(dim=1) - 1)[batch.token_mask]
    order = torch.argsort(rows * 1000 + positions)  # the trace's token order: text, then position
    assert torch.equal(trace.text, rows[order]) and torch.equal(trace.position, positions[order])
    for layer, point in points(model).items():
        hidden, output = (value[batch.token_mask][order] for value in io[layer])
        with torch.no_grad():
            rebuilt = point.experts(hidden, trace.ids[layer], trace.weights[layer])
            if point.shared_expert is not None:
                shared = trace.shared[layer][:, None] if point.shared_gate is not None else 1.0
                rebuilt = rebuilt + shared * point.shared_expert(hidden)
        diff = (rebuilt - output).abs().max().item()
        assert diff <= 1e-5, f"{family} router.{layer}: max abs diff {diff}"
        assert (point.shared_gate is not None) == (layer in trace.shared)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_batched_equals_one_by_one_and_pads_never_appear(family, padding_side):
    model, tokenizer = tiny(family)
    batched = trace_router(
        model, tokenizer, TEXTS, tokenization=Tokenization(batch_size=len(TEXTS), padding_side=padding_side)
    )
    single = trace_router(model, tokenizer, TEXTS, tokenization=Tokenization(batch_size=1))
    lengths = [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    assert len(batched.text) == sum(lengths), "exactly the non-pad tokens"
    assert batched.text.tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert batched.position.tolist() == [p for n in lengths for p in range(n)]
    for layer in router_layers(model):
        assert torch.equal(batched.ids[layer], single.ids[layer]), f"{family} router.{layer}"
        for name in ("logits", "probs", "weights"):
            diff = (getattr(batched, name)[layer] - getattr(single, name)[layer]).abs().max().item()
            assert diff <= 1e-5, f"{family} {padding_side} router.{layer} {name}: max abs diff {diff}"
        torch.testing.assert_close(batched.probs[layer].sum(-1), torch.ones(len(batched.text)))
    no_bos = trace_router(model, tokenizer, TEXTS, tokenization=Tokenization(exclude_bos=True))
    assert len(no_bos.text) == sum(lengths) - len(TEXTS)


@pytest.mark.parametrize("family", ["qwen2_moe", "gpt_oss"])
def test_router_site_streams_into_capture_and_the_store(family, tmp_path):
    from probes.data import demo_corpus

    model, tokenizer = tiny(family)
    sites = [Site(layer, "router") for layer in router_layers(model)]
    pooled = capture(model, tokenizer, TEXTS, sites, tokenization=Tokenization(batch_size=3))
    trace = trace_router(model, tokenizer, TEXTS)
    for site in sites:
        assert pooled[site].shape == (len(TEXTS), 3, width(model, "router"))
        torch.testing.assert_close(pooled[site], trace.pooled(site.layer))
    torch.testing.assert_close(trace.importance(sites[0].layer, "prob"), trace.pooled(sites[0].layer)[:, 0])
    corpus = demo_corpus().subset(["eng", "deu"], n=5)
    store = capture_to_store(model, tokenizer, corpus, sites, tmp_path / "store")
    reread = ActivationStore(store.path).get(sites[-1], "deu")
    torch.testing.assert_close(reread, trace_router(model, tokenizer, corpus.texts("deu")).pooled(sites[-1].layer))
    with pytest.raises(SiteError, match=f"{sites[0]}: a read-only hook"):
        with watch(model, sites[:1], lambda site, view, ctx: view * 2):
            model(**tokenizer(TEXTS[:1], return_tensors="pt"))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_routing_is_independent_of_output_router_logits(family):
    model, tokenizer = tiny(family)
    ids, mask = prompt_batch(tokenizer, TEXTS[:4], side="right")
    runs = {}
    for flag in (False, True):
        with torch.no_grad(), routing_of(model) as seen:
            out = model(input_ids=ids, attention_mask=mask, output_router_logits=flag)
        runs[flag] = seen
        if flag:  # the model's own report is the raw gate logits we trace, layer by layer
            for reported, layer in zip(out.router_logits, router_layers(model)):
                torch.testing.assert_close(reported.float().view(seen[layer].logits.shape), seen[layer].logits)
    for layer in router_layers(model):
        for name in ("logits", "probs", "ids", "weights"):
            assert torch.equal(getattr(runs[False][layer], name), getattr(runs[True][layer], name))


def routed(model, ids, mask, plan=(), languages=None):
    with torch.no_grad(), steer(model, list(plan), languages=languages), routing_of(model) as seen:
        model(input_ids=ids, attention_mask=mask)
    return seen


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_force_experts_puts_the_expert_in_every_steered_top_k(family):
    model, tokenizer = tiny(family)
    ids, mask = prompt_batch(tokenizer, TEXTS[:4], side="left")
    layers = router_layers(model)
    plain = routed(model, ids, mask)
    forced = {layer: (3 + layer) % 8 for layer in layers}  # DeepSeek-V3 needs a large eps: see steer.router
    plan = [(ForceExperts({l: [e] for l, e in forced.items()}, eps=4.0), Schedule(prefill=(1, 4)))]
    steered = routed(model, ids, mask, plan)
    positions = mask.cumsum(dim=1) - 1
    chosen = mask.bool() & (positions >= 1) & (positions < 4)
    for layer, expert in forced.items():
        has = (steered[layer].ids == expert).any(dim=-1)
        assert has[chosen].all(), f"{family} router.{layer}: forced expert {expert} missing at steered tokens"
        assert not (plain[layer].ids == expert).any(dim=-1)[chosen].all(), "the test must force a change"
    first = layers[0]  # upstream of any edit, the unsteered tokens route as before
    assert torch.equal(steered[first].ids[mask.bool() & ~chosen], plain[first].ids[mask.bool() & ~chosen])


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_large_negative_bias_and_ban_remove_an_expert(family):
    model, tokenizer = tiny(family)
    ids, mask = prompt_batch(tokenizer, TEXTS, side="right")
    valid = mask.bool()
    plain = routed(model, ids, mask)
    favourite = {layer: int(torch.bincount(r.ids[valid].flatten(), minlength=8).argmax()) for layer, r in plain.items()}
    experts = {layer: [expert] for layer, expert in favourite.items()}
    for intervention in (RouterBias(experts, -1e4), BanExperts(experts, eps=4.0)):  # eps: for DeepSeek-V3
        steered = routed(model, ids, mask, [intervention])
        for layer, expert in favourite.items():
            assert not (steered[layer].ids[valid] == expert).any(), f"{family} {intervention} router.{layer}"


def test_force_and_ban_on_one_layer_follow_steermoe_in_either_order():
    """SteerMoE (src/modeling_vllm/*.py): on log-softmax scores s, s[activate] <- max(s) + 0.01 and
    s[deactivate] <- min(s) - 0.01, both from the unedited s; Mixtral then routes by top-2 of softmax(s)."""
    model, tokenizer = tiny("mixtral")
    ids, mask = prompt_batch(tokenizer, TEXTS, side="right")
    layer, valid = router_layers(model)[0], mask.bool()
    plain = routed(model, ids, mask)[layer]
    favourite = int(torch.bincount(plain.ids[..., 0][valid]).argmax())  # banned: often the max itself
    forced = (favourite + 3) % 8
    force, ban = ForceExperts({layer: [forced]}), BanExperts({layer: [favourite]})
    scores = torch.log_softmax(plain.logits.float(), dim=-1)
    top, bottom = scores.amax(-1), scores.amin(-1)
    scores[..., forced], scores[..., favourite] = top + 0.01, bottom - 0.01
    weights, expected = torch.softmax(scores, dim=-1).topk(2, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    for plan in ([force, ban], [ban, force]):
        steered = routed(model, ids, mask, plan)[layer]
        assert torch.equal(steered.ids[valid].sort(-1).values, expected[valid].sort(-1).values)
        got = torch.zeros_like(scores).scatter_(-1, steered.ids, steered.weights.float())
        want = torch.zeros_like(scores).scatter_(-1, expected, weights)
        torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_generation_under_router_steering_is_cache_and_batch_proof(family):
    model, tokenizer = tiny(family)
    texts = TEXTS[:3]
    ids, mask = prompt_batch(tokenizer, texts, side="left")
    layers = router_layers(model)
    options = dict(
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    plan = [
        (RouterBias({layer: [1, 5] for layer in layers}, 3.0), Schedule(only=("deu", "jpn"))),
        (ForceExperts({layers[-1]: [2]}), Schedule(prefill="last", decode=2)),
    ]
    plain = model.generate(input_ids=ids, attention_mask=mask, **options)
    languages = ["eng", "deu", "jpn"]
    with steer(model, plan, languages=languages) as handle:
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **options)
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **options)
        singles = []
        for text, language in zip(texts, languages):
            handle.set_languages([language])
            one_ids, one_mask = prompt_batch(tokenizer, [text])
            one = model.generate(input_ids=one_ids, attention_mask=one_mask, **options)
            singles.append(one.sequences[0, one_ids.shape[1] :])
    assert torch.equal(cached.sequences, uncached.sequences)
    for row, single in enumerate(singles):
        assert torch.equal(cached.sequences[row, ids.shape[1] :], single), f"{family}: batched != one-by-one, row {row}"
    for step, (a, b, c) in enumerate(zip(cached.logits, uncached.logits, plain.logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{family} decode step {step}")
    change = max((a - c).abs().max().item() for a, c in zip(cached.logits, plain.logits))
    assert change > 1e-4, f"{family}: router steering must change the next-token logits"


def test_language_gating_and_hook_hygiene():
    model, tokenizer = tiny("mixtral")
    ids, mask = prompt_batch(tokenizer, TEXTS[:4], side="right")
    before = hook_count(model)
    plain = routed(model, ids, mask)
    gate = Schedule(only=("deu",))
    steered = routed(model, ids, mask, [(RouterBias({1: [0]}, 5.0), gate)], languages=["eng", "deu", "jpn", "rus"])
    changed = [bool((steered[1].logits[row] != plain[1].logits[row]).any()) for row in range(4)]
    assert changed == [False, True, False, False]
    with pytest.raises(RuntimeError, match="inside"):
        with steer(model, [ForceExperts({2: [1]})]), routing_of(model):
            raise RuntimeError("inside")
    with pytest.raises(InterventionError, match="router.1: neuron indices 9..9 out of range; the site has 8"):
        routed(model, ids, mask, [BanExperts({1: [9]})])
    assert hook_count(model) == before


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_moe_family_has_router_sites_and_sizes(family):
    model, _ = tiny(family)
    assert width(model, "router") == 8 and width(model, "resid") == 64 and width(model, "head") == 16
    assert len(router_layers(model)) >= 3 and model_identity(model)["model_type"] == family
    for layer, point in points(model).items():
        assert point.layer == layer and point.n_experts == 8
        assert (point.shared_expert is not None) == (family in ("qwen2_moe", "deepseek_v3"))


def test_sites_know_which_layers_route():
    model, _ = tiny("qwen2_moe")  # layer 4 has a dense MLP
    assert router_layers(model) == [1, 2, 3] and width(model, "router") == 8
    with pytest.raises(SiteError, match="dense MLP, no router; routed layers: \\[1, 2, 3\\]"):
        locate(model, Site(4, "router"))
    with pytest.raises(SiteError, match="'mlp_act' does not exist"):
        locate(model, Site(1, "mlp_act"))
    assert load_model("random:olmoe")[0].config.model_type == "olmoe"
    dense, _ = tiny("llama")
    assert router_layers(dense) == []
    with pytest.raises(SiteError, match="has no MoE router"):
        trace_router(dense, _, TEXTS[:1])


def _reference_total_actual_weight(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Bandarkar et al., calculate_total_actual_weight_per_sequence: softmax, keep the top-k, renormalise,
    mean over the sequence's tokens (one unpadded sequence: logits (tokens, experts))."""
    probs = torch.softmax(logits.double(), dim=-1)
    threshold = probs.topk(k, dim=-1).values[..., -1:]
    kept = probs * (probs >= threshold)
    return (kept / (kept.sum(-1, keepdim=True) + 1e-20)).mean(dim=0)


def _reference_jsd(p: torch.Tensor, q: torch.Tensor, normalised: bool) -> torch.Tensor:
    """analysis_helpers.js_divergence / calculate_entropy_normalized_jsd on rows."""
    log_m = (0.5 * (p + q)).clamp(min=1e-10).log()
    kl = lambda a: torch.nn.functional.kl_div(log_m, a, reduction="none").sum(-1)  # noqa: E731
    js = 0.5 * (kl(p) + kl(q))
    if not normalised:
        return js
    entropy_of = lambda a: -(a * (a + 1e-10).log()).sum(-1)  # noqa: E731
    bound = math.log(p.shape[-1]) - 0.5 * (entropy_of(p) + entropy_of(q))
    return js / bound.clamp(min=1e-6)


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen2_moe", "qwen3_moe"])
def test_routing_divergence_equals_the_released_code_one_sequence_at_a_time(family):
    model, tokenizer = tiny(family)
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 10)
    layers = router_layers(model)
    activations = capture_corpus(
        model,
        tokenizer,
        corpus,
        [Site(l, "router") for l in layers],
        pooling="mean",
        tokenization=Tokenization(batch_size=4),
    )
    table = measure_routing(activations, "eng").set_index(["layer", "language", "metric"])["value"]
    k = int(getattr(model.config, "num_experts_per_tok"))
    importance = {}
    for lang in corpus.languages:
        rows = []
        for text in corpus.texts(lang):
            seen = {}
            hooks = [
                points(model)[l].gate.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(l, out[0]))
                for l in layers
            ]
            with torch.no_grad():
                model(**tokenizer(text, return_tensors="pt"))
            for hook in hooks:
                hook.remove()
            rows.append(torch.stack([_reference_total_actual_weight(seen[l], k) for l in layers]))
        importance[lang] = torch.stack(rows)  # (sentences, layers, experts)
    for lang in corpus.languages[1:]:
        for normalised, metric in ((False, "jsd"), (True, "jsd_norm")):
            expected = _reference_jsd(importance["eng"], importance[lang], normalised).mean(0)
            for index, layer in enumerate(layers):
                assert table[layer, lang, metric] == pytest.approx(float(expected[index]), rel=1e-4, abs=1e-7)


def test_divergence_and_overlap_match_hand_computation():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    assert jsd(p, q).tolist() == pytest.approx([math.log(2), 0.0], abs=1e-12)
    r = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)
    m = (p[0] + r) / 2
    kl = lambda a, b: float((a[a > 0] * (a[a > 0] / b[a > 0]).log()).sum())  # noqa: E731
    assert jsd(p[:1], r[None]).item() == pytest.approx(0.5 * kl(p[0], m) + 0.5 * kl(r, m), rel=1e-9)
    table = routing_divergence({3: {"eng": p, "deu": q, "fra": p.clone()}}, ci=True, n_boot=200)
    value = table.set_index(["language", "metric"])["value"]
    assert value["deu", "jsd"] == pytest.approx(math.log(2) / 2)
    assert value["fra", "jsd"] == pytest.approx(0.0) and value["fra", "jsd_norm"] == pytest.approx(0.0)
    # per sentence: ln 2 / (ln 4 - ln 2) = 1, then 0 (uniform rows: a zero bound, clamped); their mean
    assert value["deu", "jsd_norm"] == pytest.approx(0.5)
    assert list(table.columns) == ["layer", "language", "metric", "value", "ci_low", "ci_high"]
    assert set_overlap(p, q, 2).tolist() == [0.0, 1.0]  # uniform rows: topk picks the same first two
    overlap = expert_set_overlap({3: {"eng": p, "deu": q}}, k=2)
    assert overlap["value"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="router.3: deu has shape"):
        routing_divergence({3: {"eng": p, "deu": q[:1]}})


def test_language_and_universal_experts_and_figures():
    eng = torch.tensor([[0.6, 0.6, 0.4, 0.4]]).repeat(4, 1) / 1.0
    deu = torch.tensor([[0.6, 0.1, 0.9, 0.4]]).repeat(4, 1)
    jpn = torch.tensor([[0.5, 0.1, 0.4, 1.0]]).repeat(4, 1)
    usage = expert_usage({2: {"eng": eng, "deu": deu, "jpn": jpn}, 3: {"eng": eng, "deu": eng, "jpn": eng}})
    assert len(usage) == 2 * 3 * 4 and set(usage["metric"]) == {"usage"}
    specific = language_experts(usage, threshold=0.3)
    found = set(zip(specific["layer"], specific["expert"], specific["language"]))
    assert found == {(2, 1, "eng"), (2, 2, "deu"), (2, 3, "jpn")}
    lape = language_experts(usage, method="entropy", fraction=0.5, quantile=0.9)
    assert set(lape["language"]) <= {"deu", "jpn"} and len(lape) >= 1
    universal = universal_experts(usage, ratio=0.8)
    assert set(zip(universal["layer"], universal["expert"])) == {(2, 0), (3, 0), (3, 1)}
    table = routing_divergence({2: {"eng": eng, "deu": deu}, 3: {"eng": eng, "deu": deu}})
    (image,) = divergence_heatmap(table).axes[0].images  # layer x language, the table's jsd values
    expected = table[table.metric == "jsd"].pivot(index="layer", columns="language", values="value").to_numpy()
    np.testing.assert_allclose(image.get_array(), expected)
    panels = usage_heatmap(usage).axes[:2]  # one language x expert panel per layer (then the colour bar)
    for panel, layer in zip(panels, (2, 3)):
        grid = usage[usage.layer == layer].pivot(index="language", columns="expert", values="value").sort_index()
        np.testing.assert_allclose(panel.images[0].get_array(), grid.to_numpy())
        assert [label.get_text() for label in panel.get_yticklabels()] == list(grid.index)


def test_promote_pivot_experts_biases_the_most_used_experts_in_the_middle_layers():
    usage = {layer: torch.arange(8.0).roll(layer) for layer in range(1, 7)}
    bias = promote_pivot_experts(usage, n_experts=2, delta=2.0)
    assert middle_layers(range(1, 7)) == [3, 4] and bias.layers == (3, 4)
    assert sorted(bias.experts[3].tolist()) == [1, 2] and bias.delta == 2.0
    assert promote_pivot_experts(usage, layers=[1]).layers == (1,)
    with pytest.raises(ValueError, match="no usage for layers \\[9\\]"):
        promote_pivot_experts(usage, layers=[9])
    x = torch.zeros(1, 2, 8)
    at = lambda layer: EditContext(Site(layer, "router"), None, None)  # noqa: E731 (edits read only the layer)
    assert bias.edit(x, at(3))[0, 0].tolist() == [0, 2, 2, 0, 0, 0, 0, 0]
    assert ForceExperts({1: [4]}, eps=0.5).edit(torch.arange(8.0)[None, None], at(1))[0, 0, 4] == 7.5
    assert BanExperts({1: [7]}, eps=0.5).edit(torch.arange(8.0)[None, None], at(1))[0, 0, 7] == -0.5
