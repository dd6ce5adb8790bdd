"""Steered generation inside vLLM equals the ``hf`` backend's, request by request, in mixed continuous batches."""

from __future__ import annotations

import pytest
import torch

from conftest import hf_tokens
from steer.errors import EngineError
from steer.interventions import Ablate, AddVector, ApplyMap, Erase, HeadShift, SetNeurons, ZeroNeurons
from steer.router import BanExperts, ForceExperts, RouterBias
from steer.schedule import Schedule

TEXTS = ["Hello world, this is", "Das ist ein Test von", "xyz abc", "La maison est"]
STEPS = 8


def plans_for(family: str) -> dict:
    """Every intervention the engine runs, at sites this family has, under several schedules."""
    g = torch.Generator().manual_seed(1)
    d = 128
    plans = {
        "add": AddVector({2: torch.randn(d, generator=g) * 4}),
        "add_prefill_only": (
            AddVector({1: torch.randn(d, generator=g) * 4, 3: torch.randn(d, generator=g) * 4}),
            Schedule(decode="none"),
        ),
        "add_decode_only": (AddVector({2: torch.randn(d, generator=g) * 4}), Schedule(prefill="none", decode=(2, 5))),
        "add_last_token": (AddVector({2: torch.randn(d, generator=g) * 6}), Schedule(prefill="last", decode=2)),
        "add_span": (AddVector({3: torch.randn(d, generator=g) * 6}), Schedule(prefill=(-2, None))),
        "embeddings": AddVector({0: torch.randn(d, generator=g) * 4}),
        "ablate": Ablate({2: torch.randn(3, d, generator=g)}, means={2: torch.randn(d, generator=g)}),
        "map": ApplyMap({2: torch.randn(d, d, generator=g) * 0.2}, sigma=0.7, target_mean={2: torch.randn(d)}),
        "two_edits_one_site": [
            AddVector({2: torch.randn(d, generator=g) * 3}),
            Ablate({2: torch.randn(d, generator=g)}),
        ],
        "heads": HeadShift({2: torch.tensor([0, 3])}, {2: torch.randn(2, 32, generator=g) * 5}),
        "erase": Erase({2: torch.randn(d, 2, generator=g)}, {2: torch.randn(2, d, generator=g)}, {2: torch.randn(d)}),
    }
    if family == "mixtral":
        plans["router_bias"] = RouterBias({1: [2, 5], 3: [0]}, delta=3.0)
        plans["force_ban"] = [ForceExperts({2: [1, 6]}), (BanExperts({1: [0, 1, 2, 3]}), Schedule(prefill="last"))]
    else:
        plans["set_neurons"] = SetNeurons({2: torch.tensor([1, 5, 9])}, {2: torch.tensor([3.0, -4.0, 5.0])})
        plans["zero_gate"] = ZeroNeurons({2: torch.arange(0, 128, 2)})  # LAPE's deactivation, on mlp_gate
    return plans


@pytest.mark.parametrize("family", ["llama", "qwen2", "mixtral"])
def test_steered_tokens_equal_hf_for_every_intervention_and_schedule(family, checkpoints, engines):
    _, model, tokenizer = checkpoints[family]
    engine = engines(family)
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]
    plans = plans_for(family)
    for name, plan in plans.items():
        engine.install(plan, name)
    plain = engine.generate(prompts, max_tokens=STEPS)
    assert plain == [hf_tokens(model, ids, None, STEPS) for ids in prompts]
    for name, plan in plans.items():
        got = engine.generate(prompts, plans=name, max_tokens=STEPS)
        assert got == [hf_tokens(model, ids, plan, STEPS) for ids in prompts], name
        assert got != plain, f"{name} changed nothing: the comparison would prove nothing"


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_a_mixed_batch_gives_each_request_what_it_gets_alone(family, checkpoints, engines):
    _, model, tokenizer = checkpoints[family]
    engine = engines(family)
    plans = plans_for(family)
    engine.install(plans["add"], "add")
    engine.install(plans["ablate"], "ablate")
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]
    chosen = ["add", None, "ablate", "add"]
    together = engine.generate(prompts, plans=chosen, max_tokens=STEPS)
    alone = [engine.generate([ids], plans=name, max_tokens=STEPS)[0] for ids, name in zip(prompts, chosen)]
    assert together == alone
    assert together == [hf_tokens(model, ids, plans.get(name), STEPS) for ids, name in zip(prompts, chosen)]
    assert len({tuple(tokens) for tokens in together[:3]}) == 3


def test_language_gating_reads_each_requests_language(checkpoints, engines):
    _, model, tokenizer = checkpoints["llama"]
    engine = engines("llama")
    vector = AddVector({2: torch.randn(128, generator=torch.Generator().manual_seed(3)) * 5})
    gated = (vector, Schedule(only=("deu",)))
    engine.install(gated, "deu_only")
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS[:2]]
    got = engine.generate(prompts, plans="deu_only", languages=["fra", "deu"], max_tokens=STEPS)
    assert got[0] == hf_tokens(model, prompts[0], None, STEPS)
    assert got[1] == hf_tokens(model, prompts[1], gated, STEPS, languages="deu")
    assert got[1] != hf_tokens(model, prompts[1], None, STEPS)
    with pytest.raises(EngineError, match="gated by language"):
        engine.generate(prompts, plans="deu_only", max_tokens=STEPS)


def test_prefix_cache_never_serves_a_steered_request_unsteered_kv(checkpoints, engines):
    path, model, tokenizer = checkpoints["llama"]
    engine = engines("llama")
    long_prompt = tokenizer(" ".join(TEXTS * 40))["input_ids"][:400]  # several KV blocks
    plan = AddVector({1: torch.randn(128, generator=torch.Generator().manual_seed(4)) * 5})
    engine.install(plan, "add_cached")
    first = engine.generate([long_prompt], max_tokens=STEPS)  # fills the cache, unsteered
    requests, params = engine.requests([long_prompt, long_prompt], plans=[None, "add_cached"], max_tokens=STEPS)
    outputs = engine.llm.generate(requests, params, use_tqdm=False)
    assert outputs[0].num_cached_tokens > 0  # the cache is on and serves the unsteered prompt
    assert outputs[1].num_cached_tokens == 0  # but not the steered one
    assert list(outputs[0].outputs[0].token_ids) == first[0]
    assert list(outputs[1].outputs[0].token_ids) == hf_tokens(model, long_prompt, plan, STEPS)


def test_what_the_engine_cannot_run_is_refused_before_generating(checkpoints, engines):
    engine = engines("llama")
    with pytest.raises(EngineError, match="prefill token mask"):
        engine.install((AddVector({2: torch.zeros(128)}), Schedule(prefill=torch.ones(1, 3, dtype=torch.bool))))
    with pytest.raises(EngineError, match="o_proj"):
        engine.install(AddVector({2: torch.zeros(128)}, component="o_proj"), "attn")
    with pytest.raises(EngineError, match="shape"):
        engine.install(AddVector({2: torch.zeros(64)}), "narrow")
    with pytest.raises(EngineError, match="only as ZeroNeurons"):
        engine.install(SetNeurons({2: torch.tensor([1])}, {2: torch.tensor([1.0])}, component="mlp_gate"), "gate")
    with pytest.raises(EngineError, match="not installed"):
        engine.generate([[1, 2, 3]], plans="attn", max_tokens=2)  # a refused plan leaves nothing behind


def test_modes_hooks_cannot_see_are_refused(checkpoints):
    from steer.vllm import vllm_engine
    from steer.vllm.engine import _refuse_blind_modes

    with pytest.raises(EngineError, match="enforce_eager=False"):
        vllm_engine(checkpoints["llama"][0], enforce_eager=False)
    worker = {"v2_runner": False, "eager": True, "pp_size": 1}
    with pytest.raises(EngineError, match="V2 model runner"):
        _refuse_blind_modes([{**worker, "v2_runner": True}])
    with pytest.raises(EngineError, match="CUDA graphs"):
        _refuse_blind_modes([{**worker, "eager": False}])


def test_the_embedded_gemma_steers_as_under_hf():
    """Gemma 3 270M (its own norms around every sublayer, scaled embeddings): a shift at a middle layer, on every
    token and prefill-only, gives the hf backend's greedy tokens through vLLM."""
    from conftest import ENGINE_ARGS
    from probes.capture import trace
    from probes.model import Site, load_model
    from steer.vllm import vllm_engine

    model, tokenizer = load_model("default", dtype="float32")
    prompts = [tokenizer(text)["input_ids"] for text in ("The capital of France is", "Der Himmel ist heute")]
    with torch.inference_mode():
        stream = model(torch.tensor([prompts[0]]), output_hidden_states=True).hidden_states[6][0]
    direction = torch.randn(stream.shape[-1], generator=torch.Generator().manual_seed(5))
    shift = AddVector({6: direction / direction.norm() * stream.norm(dim=-1).median()})
    plans = {"shift": shift, "shift_prefill": (shift, Schedule(decode="none"))}
    engine = vllm_engine("default", **ENGINE_ARGS)
    try:
        for name, plan in plans.items():
            engine.install(plan, name)
        plain = engine.generate(prompts, max_tokens=STEPS)
        assert plain == [hf_tokens(model, ids, None, STEPS) for ids in prompts]
        for name, plan in plans.items():
            got = engine.generate(prompts, plans=name, max_tokens=STEPS)
            assert got == [hf_tokens(model, ids, plan, STEPS) for ids in prompts], name
            assert got != plain, name
        texts = ["The capital of France is", "Der Himmel ist heute"]
        sites = [Site(6, "attn_out"), Site(6, "mlp_out"), Site(18, "hidden")]  # Gemma's post-norms; the final norm
        recorded, expected = engine.record(texts, sites), trace(model, tokenizer, texts, sites)
        for site in sites:
            for got_tokens, want in zip(recorded[site], expected.tokens(site)):
                torch.testing.assert_close(got_tokens, want, atol=1e-3, rtol=1e-4)
    finally:
        engine.shutdown()


def test_tensor_parallel_two_ranks_steer_and_read_as_one(checkpoints, monkeypatch):
    """Two CPU ranks (one core each): neuron and head edits apply per rank slice, captures are put together,
    tokens and activations equal the hf backend's."""
    from conftest import ENGINE_ARGS
    from probes.capture import trace
    from probes.model import Site
    from steer.vllm import vllm_engine

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # vLLM binds each CPU rank to its own cores
    path, model, tokenizer = checkpoints["qwen2"]
    plan = [
        SetNeurons({2: torch.tensor([1, 70, 100])}, {2: torch.tensor([3.0, -4.0, 5.0])}),  # on both ranks' halves
        HeadShift({3: torch.tensor([0, 3])}, {3: torch.randn(2, 32, generator=torch.Generator().manual_seed(6)) * 5}),
        AddVector({1: torch.randn(128, generator=torch.Generator().manual_seed(8)) * 3}),
    ]
    engine = vllm_engine(path, tensor_parallel_size=2, **ENGINE_ARGS)
    try:
        assert [worker["tp_size"] for worker in engine.workers] == [2, 2]
        engine.install(plan, "mixed")
        prompts = [tokenizer(text)["input_ids"] for text in TEXTS]
        got = engine.generate(prompts, plans="mixed", max_tokens=STEPS)
        assert got == [hf_tokens(model, ids, plan, STEPS) for ids in prompts]
        assert got != engine.generate(prompts, max_tokens=STEPS)
        sites = [Site(2, "mlp_act"), Site(3, "head"), Site(4, "resid")]
        recorded = engine.record(TEXTS, sites)
        expected = trace(model, tokenizer, TEXTS, sites)
        for site in sites:
            for tokens, want in zip(recorded[site], expected.tokens(site)):
                torch.testing.assert_close(tokens, want, atol=1e-4, rtol=1e-4)
    finally:
        engine.shutdown()


def deu_or_eng_at_layer_1(mean, weight):
    """A German/English detector on mean-pooled hidden.1 (standardised by ``mean`` only)."""
    from probes.artifacts import LanguageDetector

    return LanguageDetector(1, "hidden", "mean", ("deu", "eng"), mean, torch.ones(128), weight, torch.zeros(2), {}, {})


def test_gating_by_a_detector_reads_each_prompts_language_in_the_same_pass(checkpoints, engines):
    """A plan gated on the language a detector reads at layer 1 of each prompt: the same requests are steered,
    and steered alike, as under steer(model, plan, languages=detector)."""
    from probes.capture import capture
    from probes.model import Site
    from steer import steer

    path, model, tokenizer = checkpoints["llama"]
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]
    pooled = capture(model, tokenizer, TEXTS, [Site(1, "hidden")])[Site(1, "hidden")]
    split = pooled[:2].mean(0) - pooled[2:].mean(0)  # reads the first two prompts as German, the others not
    weight = torch.stack([split, -split])
    detector = deu_or_eng_at_layer_1(pooled.mean(0), weight)
    assert detector.predict(pooled) == ["deu", "deu", "eng", "eng"]
    plan = (AddVector({2: torch.randn(128, generator=torch.Generator().manual_seed(11)) * 5}), Schedule(only=("deu",)))
    engine = engines("llama")
    engine.install(plan, "detected", detector=detector)
    got = engine.generate(prompts, plans="detected", max_tokens=STEPS)
    want = []
    for ids in prompts:
        with steer(model, plan, languages=detector):
            want.append(
                model.generate(torch.tensor([ids]), max_new_tokens=STEPS, do_sample=False)[0, len(ids) :].tolist()
            )
    assert got == want
    assert [a != b for a, b in zip(got, engine.generate(prompts, max_tokens=STEPS))] == [True, True, False, False]


def test_a_detector_plan_needs_each_prompt_in_one_pass(engines):

    detector = deu_or_eng_at_layer_1(torch.zeros(128), torch.zeros(2, 128))
    plan = (AddVector({2: torch.zeros(128)}), Schedule(only=("deu",)))
    with pytest.raises(EngineError, match="enable_chunked_prefill=False"):
        engines("qwen2").install(plan, "chunked", detector=detector)
    with pytest.raises(EngineError, match="may only edit later layers"):
        engines("llama").install(
            (AddVector({1: torch.zeros(128)}), Schedule(only=("deu",))), "early", detector=detector
        )


def test_incline_through_the_engine_equals_incline_under_hf(checkpoints, engines):
    """INCLINE's targets from a clean pass through vLLM, written at each prompt's last token of every mapped
    layer (mlp_out): each prompt's tokens equal hf's INCLINE applied to that prompt alone."""
    from probes.data import demo_corpus
    from steer.incline import fit_incline_maps, incline

    _, model, tokenizer = checkpoints["llama"]
    engine = engines("llama")
    corpus = demo_corpus().subset(["eng", "deu"], n=16)
    fitted = fit_incline_maps(model, tokenizer, corpus, ["deu"])["deu"]
    texts = TEXTS[:3]
    item = engine.incline(texts, fitted, 2.0)
    engine.install(item, "incline")
    got = engine.generate(texts, plans="incline", max_tokens=STEPS)
    want = [
        hf_tokens(model, tokenizer(t)["input_ids"], incline(model, tokenizer, [t], fitted, 2.0), STEPS) for t in texts
    ]
    assert got == want
    assert got != engine.generate(texts, max_tokens=STEPS)
    with pytest.raises(EngineError, match="holds 3 prompts"):
        engine.generate(TEXTS, plans="incline", max_tokens=STEPS)  # a fourth prompt has no recorded values
    with pytest.raises(EngineError, match="decode='none'"):
        engine.install((item[0], Schedule(prefill="last")), "incline_decoding")


def test_the_steer_command_with_backend_vllm_writes_what_hf_writes(checkpoints, tmp_path):
    """`xlalign steer --backend vllm`: the off/on table of a saved shift vector equals the hf backend's."""
    from probes.data import demo_corpus
    from xlalign.finding import find
    from xlalign.steering import steer as steer_job

    path = checkpoints["llama"][0]
    corpus = demo_corpus().subset(["eng", "deu"], n=24)
    (artifact,) = find("shift", out=tmp_path / "shift", model=path, corpus=corpus, method="shift", progress=False)
    prompts = ["Guten Morgen, ich", "Das Wetter ist"]
    options = dict(model=path, strength=8.0, layers=[2], max_new_tokens=STEPS)
    with pytest.warns(UserWarning, match="family and sizes"):
        in_vllm = steer_job(artifact, prompts, backend="vllm", **options)
    under_hf = steer_job(artifact, prompts, **options)
    assert in_vllm.to_dict() == under_hf.to_dict()
    assert (in_vllm["off"] != in_vllm["on"]).any()
