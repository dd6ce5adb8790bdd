"""The backends: a TransformerLens bridge's hook points and nnsight traces give what xlalign's own hooks give
(every site, per token and pooled, right and left padding, four families), TransformerLens's own
``run_with_cache`` agrees, steering through each equals steering through ours (logits; greedy tokens with and
without KV cache), what a backend cannot do is a clear error, and the user's model and tokenizer are never
changed."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from conftest import BACKENDS, FAMILIES, TEXTS, every_site, left_padded, through, tiny
from probes.capture import ActivationStore, Tokenization, capture, trace
from probes.capture.passes import forward, generate
from probes.capture.router_trace import trace_router
from probes.model import BRIDGE_HOOKS, BackendError, Site, n_layers, resolve_model, router_layers, site_shape, unwrap
from probes.model.tl import UNSUPPORTED
from steer.apply import steer
from steer.interventions import Ablate, AddVector, ApplyMap, HeadShift, SetNeurons, ZeroNeurons
from steer.router import RouterBias
from steer.schedule import Schedule

TOLERANCE = 1e-5


def bridged(family: str):
    return through("tl", family)


def supported(backend: str, site: Site) -> bool:
    return backend != "tl" or site.component not in UNSUPPORTED


def max_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_sites_equal_hf_sites_per_token_and_pooled(backend, family, side):
    model, tokenizer = tiny(family)
    network = through(backend, family)
    sites = [site for site in every_site(model) if supported(backend, site)]
    assert {site.component for site in sites} >= {"resid", "hidden", "attn_out", "mlp_out", "head", "q_proj"}
    if backend == "nnsight":  # every site, routers included
        assert len(sites) == len(every_site(model))
    tokenization = Tokenization(padding_side=side, batch_size=3)
    ours = trace(model, tokenizer, TEXTS, sites, tokenization=tokenization)
    theirs = trace(network, tokenizer, TEXTS, sites, tokenization=tokenization)
    for site in sites:
        assert max_difference(ours.tokens(site), theirs.tokens(site)) <= TOLERANCE, site
    for pooling in ("weighted", "last"):
        pooled = capture(model, tokenizer, TEXTS, sites, pooling=pooling, tokenization=tokenization)
        through_backend = capture(network, tokenizer, TEXTS, sites, pooling=pooling, tokenization=tokenization)
        for site in sites:
            torch.testing.assert_close(through_backend[site], pooled[site], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_lens_run_with_cache_agrees_with_hf_sites(family):
    """TransformerLens's own API, with the hook names of the table, gives xlalign's hf values."""
    model, tokenizer = tiny(family)
    bridge = bridged(family)
    text = TEXTS[1]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    layers = n_layers(model)
    sites = [Site(layer, "resid") for layer in range(layers + 1)] + [Site(layers, "hidden")]
    sites += [Site(2, component) for component in ("attn_out", "mlp_out", "q_proj", "o_proj")]
    ours = trace(model, tokenizer, [text], sites)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    for site in sites:
        if site.layer == 0:
            name = "blocks.0.hook_in"
        elif site.component == "hidden":
            name = "ln_final.hook_out"
        else:
            hook = BRIDGE_HOOKS[site.component]
            if family == "gemma3_text" and site.component in ("attn_out", "mlp_out"):
                hook = {"attn_out": "ln1_post.hook_out", "mlp_out": "ln2_post.hook_out"}[site.component]
            name = f"blocks.{site.layer - 1}.{hook}"
        expected = ours.tokens(site)[0]  # TransformerLens's cache shows projections per head: compare flat
        torch.testing.assert_close(cache[name][0].reshape(expected.shape), expected, atol=TOLERANCE, rtol=0)


def interventions(family: str, backend: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    model, _ = tiny(family)
    width = site_shape(model, Site(1, "resid"))[0]
    heads, head_dim = site_shape(model, Site(1, "head"))
    plans = {
        "add": AddVector({2: torch.randn(width, generator=generator)}, alpha=4.0),
        "ablate": Ablate({3: torch.randn(2, width, generator=generator)}),
        "map_mlp_out": ApplyMap(
            {2: torch.randn(width, width, generator=generator) / 8}, sigma=0.5, rule="code", component="mlp_out"
        ),
        "heads": HeadShift(
            {2: torch.tensor([0, heads - 1])}, {2: torch.randn(2, head_dim, generator=generator)}, alpha=3.0
        ),
    }
    if family != "mixtral":
        plans["set_mlp_act"] = SetNeurons({1: torch.tensor([3, 7, 50])}, {1: torch.tensor([2.0, -1.0, 3.0])})
    if family == "mixtral":
        plans["router_bias"] = RouterBias({2: torch.tensor([1, 3, 6])}, delta={2: torch.tensor([4.0, -3.0, 5.0])})
    elif backend == "nnsight":
        plans["zero_mlp_gate"] = ZeroNeurons({2: torch.arange(0, 128, 3)})
    return plans


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_steering_through_a_backend_equals_hf_logits_and_greedy_tokens_with_and_without_cache(backend, family):
    model, tokenizer = tiny(family)
    network = through(backend, family)
    ids, mask = left_padded(tokenizer, TEXTS[:4])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    for name, intervention in interventions(family, backend).items():
        plan = [(intervention, Schedule(prefill="all", decode="all"))]
        with torch.no_grad():
            with steer(model, plan):
                expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
                expected_tokens = model.generate(input_ids=ids, attention_mask=mask, **options)
            with steer(network, plan):
                logits = forward(network, input_ids=ids, attention_mask=mask, position_ids=positions).logits
                cached = generate(network, input_ids=ids, attention_mask=mask, use_cache=True, **options)
                uncached = generate(network, input_ids=ids, attention_mask=mask, use_cache=False, **options)
        valid = mask.bool()
        assert (expected - plain)[valid].abs().max() > 1e-3, f"{name} must change the logits"
        torch.testing.assert_close(logits[valid], expected[valid], atol=1e-4, rtol=0)
        assert torch.equal(cached, expected_tokens), name
        assert torch.equal(uncached, expected_tokens), name


@pytest.mark.parametrize("family", FAMILIES)
def test_add_vector_steers_as_steering_vectors_does(family):
    """steering-vectors (a peer; decoder block i's output is xlalign's resid.{i+1}) and AddVector give the same
    logits and greedy tokens: the steered-generation baseline of benchmarks/peers.py steers the same thing."""
    from steering_vectors import SteeringVector

    model, tokenizer = tiny(family)
    ids, mask = left_padded(tokenizer, TEXTS[:4])
    vector = torch.randn(site_shape(model, Site(2, "resid"))[0], generator=torch.Generator().manual_seed(2))
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        with SteeringVector({1: vector}, layer_type="decoder_block").apply(model, multiplier=3.0):
            theirs = model(input_ids=ids, attention_mask=mask).logits
            their_tokens = model.generate(input_ids=ids, attention_mask=mask, **options)
        with steer(model, [AddVector({2: vector}, alpha=3.0)]):
            ours = model(input_ids=ids, attention_mask=mask).logits
            our_tokens = model.generate(input_ids=ids, attention_mask=mask, **options)
        plain = model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (ours - plain)[valid].abs().max() > 1e-3
    torch.testing.assert_close(ours[valid], theirs[valid], atol=TOLERANCE, rtol=0)
    assert torch.equal(our_tokens, their_tokens)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_router_traces_through_a_backend_equal_hf_plain_and_steered(backend, family):
    model, tokenizer = tiny(family)
    network = through(backend, family)
    tokenization = Tokenization(padding_side="left", batch_size=3)
    first = router_layers(model)[0]
    bias = RouterBias({first: torch.tensor([1, 3, 6])}, delta={first: torch.tensor([4.0, -3.0, 5.0])})
    traces = {}
    for name, plan in (("plain", []), ("steered", [bias])):
        with steer(model, plan):
            ours = trace_router(model, tokenizer, TEXTS, tokenization=tokenization)
        with steer(network, plan):
            theirs = trace_router(network, tokenizer, TEXTS, tokenization=tokenization)
        assert theirs.layers == ours.layers == router_layers(model)
        assert torch.equal(theirs.text, ours.text) and torch.equal(theirs.position, ours.position)
        for layer in ours.layers:
            assert torch.equal(theirs.ids[layer], ours.ids[layer]), (name, layer)
            for field in ("logits", "probs", "weights", "shared"):
                expected = getattr(ours, field).get(layer)
                if expected is not None:
                    torch.testing.assert_close(getattr(theirs, field)[layer], expected, atol=TOLERANCE, rtol=0)
        traces[name] = ours
    assert not torch.equal(traces["steered"].ids[first], traces["plain"].ids[first]), "the bias must re-route"


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_transformer_lens_router_hooks_see_the_routing_xlalign_steers(family):
    """An edit of a bridge's router comes before its gate.hook_out and hook_expert_indices."""
    _, tokenizer = tiny(family)
    bridge = bridged(family)
    layer = router_layers(bridge)[0]
    bias = RouterBias({layer: torch.tensor([0, 5])}, delta={layer: torch.tensor([6.0, 6.0])})
    with steer(bridge, [bias]):
        routed = trace_router(bridge, tokenizer, TEXTS[1:2], layers=[layer])
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokenizer(TEXTS[1], return_tensors="pt")["input_ids"])
    torch.testing.assert_close(cache[f"blocks.{layer - 1}.mlp.gate.hook_out"], routed.logits[layer], atol=0, rtol=0)
    chosen = cache[f"blocks.{layer - 1}.mlp.gate.hook_expert_indices"]
    assert torch.equal(chosen.sort(dim=-1).values, routed.ids[layer].sort(dim=-1).values)
    assert (routed.ids[layer] == 0).any(dim=-1).float().mean() > 0.5, "the bias sends most tokens to expert 0"


@pytest.mark.parametrize(
    ("family", "site", "intervention"),
    [("llama", Site(2, "mlp_gate"), ZeroNeurons({2: torch.tensor([1, 2])})), ("gpt2", Site(2, "qkv_proj"), None)],
)
def test_what_the_bridge_cannot_hook_is_a_clear_error(family, site, intervention):
    model, tokenizer = tiny(family)
    bridge = bridged(family)
    with pytest.raises(
        BackendError,
        match=rf"{site}: the TransformerLens backend cannot read or edit "
        rf"'{site.component}'.*backend='hf'",
    ):
        trace(bridge, tokenizer, TEXTS[:2], [site])
    if intervention is not None:
        with pytest.raises(BackendError, match=str(site)):
            with steer(bridge, [intervention]):
                pass
    trace(model, tokenizer, TEXTS[:2], [site])  # the hf backend has it


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_from_resolve_model_leaves_the_users_model_and_tokenizer_untouched(backend):
    model, tokenizer = copy.deepcopy(tiny("llama"))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    forwards = {name: type(module).forward for name, module in model.named_modules()}
    # transformers' own output-capturing hooks may already be there (installed by an earlier test's call): the
    # hooks must be exactly those the model had
    hooks = {
        name: (dict(module._forward_hooks), dict(module._forward_pre_hooks)) for name, module in model.named_modules()
    }
    attention, padding = model.config._attn_implementation, tokenizer.padding_side
    network, returned = resolve_model(model, tokenizer, backend=backend)
    trace(network, tokenizer, TEXTS[:3], [Site(2, "resid")])
    with steer(network, [AddVector({2: torch.ones(64)})]):
        generate(network, **tokenizer(TEXTS[:1], return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert unwrap(network) is not model and returned is tokenizer
    assert model.config._attn_implementation == attention and tokenizer.padding_side == padding
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    for name, module in model.named_modules():
        assert type(module).forward is forwards[name] and "forward" not in vars(module), name
        assert "generate" not in vars(module), name
        assert (dict(module._forward_hooks), dict(module._forward_pre_hooks)) == hooks[name], name
    assert type(model.model.layers[0]).__module__.startswith("transformers."), "the layers are not wrapped"


def test_nnsight_runs_xlalign_hooks_only_from_its_traces_and_refuses_other_passes():
    model, tokenizer = tiny("llama")
    network = through("nnsight", "llama")
    inner = unwrap(network)
    ids = tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]

    def hooks():  # transformers' own output-capturing hooks may be there from an earlier call: only ours count
        return {name: dict(module._forward_hooks) for name, module in inner.named_modules()}

    before = hooks()
    with steer(network, [AddVector({2: torch.ones(64)})]):
        assert hooks() == before, "no torch hook reads or edits: nnsight traces do"
        with pytest.raises(BackendError, match="outside xlalign, so the record"):
            inner(input_ids=ids)  # a pass that would silently skip the plan
        steered = forward(network, input_ids=ids).logits
    plain = forward(network, input_ids=ids).logits
    with steer(model, [AddVector({2: torch.ones(64)})]), torch.no_grad():
        torch.testing.assert_close(steered, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert (steered - plain).abs().max() > 1e-3
    assert not any(module._forward_pre_hooks for module in inner.modules()), "the guards leave with the block"


def test_importing_xlalign_imports_no_backend_package():
    code = "import sys, probes.model, probes.capture, steer; print({'transformer_lens', 'nnsight'} & {*sys.modules})"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "set()\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_capture_through_a_backend_writes_the_hf_store(tmp_path, backend):
    from xlalign.cli import main

    small = [
        "--model",
        "random:gemma3",
        "--corpus",
        "demo",
        "--langs",
        "eng,jpn",
        "--max-sentences",
        "6",
        "--sites",
        "resid,attn_out,mlp_out,hidden",
        "--no-progress",
    ]
    assert main(["capture", *small, "--out", str(tmp_path / "hf")]) == 0
    assert main(["capture", *small, "--backend", backend, "--out", str(tmp_path / backend)]) == 0
    ours, theirs = ActivationStore(tmp_path / "hf"), ActivationStore(tmp_path / backend)
    assert theirs.sites == ours.sites and len(ours.sites) == 4 * 4 + 2
    assert theirs.model == ours.model, "a model's identity does not depend on the backend"
    for site in ours.sites:
        for language in ("eng", "jpn"):
            torch.testing.assert_close(theirs.get(site, language), ours.get(site, language), atol=TOLERANCE, rtol=0)
