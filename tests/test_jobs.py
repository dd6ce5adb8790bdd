"""Jobs take the model objects users hold (causal LMs, bare decoders, PEFT models, registered families) and
leave them untouched; outputs honour the umask; an interrupted ablation resumes."""

from __future__ import annotations

import copy
import dataclasses
import os
import stat

import pandas as pd
import pytest
import torch

from conftest import TEXTS, tiny
from probes.capture import capture, capture_corpus, capture_to_store, trace
from probes.data import demo_corpus
from probes.model import (
    ARCHITECTURES,
    ArchTable,
    ModelError,
    Site,
    SiteError,
    Tap,
    model_identity,
    register_architecture,
    resolve_model,
)
from steer.apply import steer
from steer.interventions import AddVector
from xlalign import finding, jobs
from xlalign.closed_loop import evaluate, run

SMALL = demo_corpus().subset(["eng", "deu", "jpn"], 12)


def snapshot(model) -> dict:
    """What must not change: weights, hooks, instance attributes (a shadowed forward or generate)."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "attributes": {id(m): sorted(vars(m)) for m in model.modules()},
        "attention": model.config._attn_implementation,
    }


def assert_untouched(model, before: dict) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"] and after["attributes"] == before["attributes"]
    assert after["attention"] == before["attention"]
    assert all(torch.equal(v, before["state"][k]) for k, v in after["state"].items())


def test_run_and_evaluate_take_a_model_object_and_leave_it_untouched(tmp_path):
    model, tokenizer = tiny("llama")
    before = snapshot(model)
    report = run(tmp_path / "run", model=model, tokenizer=tokenizer, corpus=SMALL, methods=["shift"], progress=False)
    assert report.is_file() and "random:llama" in report.read_text()
    table = pd.read_csv(tmp_path / "run" / "metrics.csv")
    acts = capture_corpus(model, tokenizer, SMALL, [Site(2, "resid")])
    from probes.analysis import mexa

    row = table[(table.layer == 2) & (table.language == "deu") & (table.metric == "mexa")]
    assert row.value.item() == pytest.approx(mexa(acts.get(Site(2, "resid"), "eng"), acts.get(Site(2, "resid"), "deu")))
    assert evaluate(
        tmp_path / "eval", model=model, tokenizer=tokenizer, corpus=SMALL, methods=["shift"], progress=False
    ).is_file()
    assert_untouched(model, before)
    with pytest.raises(ModelError, match="without its tokenizer"):
        run(tmp_path / "nothing", model=model, corpus=SMALL)
    assert not (tmp_path / "nothing").exists(), "a job that cannot start leaves no directory behind"


def test_a_bare_decoder_is_read_like_its_causal_lm(tmp_path):
    model, tokenizer = tiny("llama")
    bare = model.model  # LlamaModel: no LM head
    sites = [Site(0, "resid"), Site(2, "resid"), Site(3, "head")]
    ours, theirs = capture(bare, tokenizer, TEXTS, sites), capture(model, tokenizer, TEXTS, sites)
    assert all(torch.equal(ours[site], theirs[site]) for site in sites)
    store = jobs.capture(
        tmp_path / "store", model=bare, tokenizer=tokenizer, corpus=SMALL, sites="resid", progress=False
    )
    assert store.layers("resid") == [0, 1, 2, 3, 4] and store.model["model_type"] == "llama"
    with pytest.raises(ValueError, match="no LM head"):
        evaluate(tmp_path / "eval", model=bare, tokenizer=tokenizer, corpus=SMALL)
    assert not (tmp_path / "eval").exists()


def test_a_peft_model_is_read_and_steered_like_its_merged_weights():
    import peft

    base, tokenizer = tiny("llama")
    wrapped = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    )
    wrapped.eval()
    merged = copy.deepcopy(wrapped).merge_and_unload()
    sites = [Site(2, "resid"), Site(2, "mlp_act"), Site(3, "head")]
    assert not torch.allclose(
        trace(wrapped, tokenizer, TEXTS[:3], sites).tokens(sites[0])[1],
        trace(base, tokenizer, TEXTS[:3], sites).tokens(sites[0])[1],
    ), "the adapter matters"
    ours, reference = trace(wrapped, tokenizer, TEXTS[:3], sites), trace(merged, tokenizer, TEXTS[:3], sites)
    for site in sites:
        for a, b in zip(ours.tokens(site), reference.tokens(site)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    ids = torch.tensor([tokenizer(TEXTS[1])["input_ids"]])
    plan = [AddVector({2: torch.randn(64, generator=torch.Generator().manual_seed(0))}, 5.0)]
    options = dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    with torch.no_grad():
        with steer(wrapped, plan):
            steered = wrapped.generate(**options)
        with steer(merged, plan):
            expected = merged.generate(**options)
    assert torch.equal(steered, expected)
    assert model_identity(wrapped)["weights_sha256"] != model_identity(base)["weights_sha256"]


def test_an_unknown_family_is_registered_with_a_table_and_validated():
    model, tokenizer = tiny("llama")
    custom = copy.deepcopy(model)
    custom.config.model_type = "my_decoder"
    with pytest.raises(SiteError, match="no site table for architecture 'my_decoder'.*register_architecture"):
        resolve_model(custom, tokenizer)
    good = ARCHITECTURES["llama"]
    wrong = ArchTable(
        blocks="layers",
        final_norm="embed_tokens",
        attn_out=good.attn_out,
        mlp_out=good.mlp_out,
        mlp_act=good.mlp_act,
        mlp_gate=good.mlp_gate,
        head=good.head,
    )
    try:
        register_architecture(
            "my_decoder",
            ArchTable(
                blocks="layers",
                final_norm="norm",
                attn_out=Tap("self_attn", "output"),
                mlp_out=Tap("mlp", "output"),
                mlp_act=good.mlp_act,
                mlp_gate=good.mlp_gate,
                head=good.head,
            ),
        )
        with pytest.raises(SiteError, match="already has a table"):
            register_architecture("my_decoder", wrong)
        assert resolve_model(custom, tokenizer)[0] is custom  # validated against its own hidden states
        register_architecture("my_decoder", wrong, replace=True)
        with pytest.raises(SiteError, match="final_norm .embed_tokens. cannot be applied to resid.4"):
            resolve_model(copy.deepcopy(custom), tokenizer)
        misnamed = dataclasses.replace(good, linear={"q_proj": "self_attn.query"})
        register_architecture("my_decoder", misnamed, replace=True)
        with pytest.raises(SiteError, match="a path of its ArchTable does not exist"):
            resolve_model(copy.deepcopy(custom), tokenizer)
    finally:
        ARCHITECTURES.pop("my_decoder", None)


def test_outputs_follow_the_umask(tmp_path):
    model, tokenizer = tiny("llama")
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            out = tmp_path / f"umask{mask:o}"
            store = capture_to_store(model, tokenizer, SMALL, [Site(1, "hidden")], out / "store", shard_size=8)
            shift = finding.find(
                "shift", out / "shifts", model=model, tokenizer=tokenizer, corpus=SMALL, progress=False
            )
            jobs.measure(store.path, out / "metrics.csv")
        finally:
            os.umask(old)
        files = [store.shard("deu", 0), store.path / "meta.json", *shift, out / "metrics.csv"]
        assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {mode}, mask


def test_an_interrupted_ablation_keeps_its_rows_and_resumes(tmp_path, monkeypatch):
    from probes.capture import collect_stats
    from probes.find import LAPE

    model, tokenizer = tiny("llama")
    stats = collect_stats(model, tokenizer, SMALL, [Site(layer, "mlp_gate") for layer in range(1, 5)], bins=0)
    neurons = LAPE(top_fraction=0.05).fit(stats).neurons_.save(tmp_path / "lape.safetensors")
    zeroed = [lang for lang in SMALL.languages if len(LAPE(top_fraction=0.05).fit(stats).neurons_.neurons[lang])]
    assert len(zeroed) >= 2, "the test needs two languages with neurons"
    full = jobs.ablate(neurons, tmp_path / "full.csv", model=model, tokenizer=tokenizer, corpus=SMALL, progress=False)

    calls, real = [], jobs.next_token_loss

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 * 2 + 1:  # unablated losses, the first language's, then one more
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "next_token_loss", interrupt)
    out = tmp_path / "partial.csv"
    with pytest.raises(KeyboardInterrupt):
        jobs.ablate(neurons, out, model=model, tokenizer=tokenizer, corpus=SMALL, progress=False)
    kept = pd.read_csv(out)
    assert list(kept.zeroed.unique()) == zeroed[:1] and len(kept) == 3
    with pytest.raises(ValueError, match="partial ablation of other neurons, model, corpus"):
        jobs.ablate(neurons, out, model=model, tokenizer=tokenizer, corpus=SMALL.subset(n=10), progress=False)
    calls.clear()
    monkeypatch.setattr(jobs, "next_token_loss", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = jobs.ablate(neurons, out, model=model, tokenizer=tokenizer, corpus=SMALL, progress=False)
    assert len(calls) == 3 * (len(zeroed) - 1), "only the unfinished languages are computed"
    pd.testing.assert_frame_equal(resumed, full)
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(tmp_path / "full.csv"))
    assert not (tmp_path / ".partial.csv.resume.json").exists()
    with pytest.raises(ValueError, match="exists"):
        jobs.ablate(neurons, out, model=model, tokenizer=tokenizer, corpus=SMALL, progress=False)


def test_an_interrupted_evaluation_resumes_to_the_same_table(tmp_path, monkeypatch):
    import steer.evaluate

    model, tokenizer = tiny("llama")
    options = dict(model=model, tokenizer=tokenizer, corpus=SMALL, methods=["shift", "procrustes"], progress=False)
    full = pd.read_csv(evaluate(tmp_path / "full", **options).parent / "evaluation.csv")
    real, calls = steer.evaluate.steer, []

    def interrupt_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # deu: shift x2, procrustes; then jpn's first setting
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(steer.evaluate, "steer", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "part", **options)
    kept = pd.read_csv(tmp_path / "part" / "evaluation.csv")
    assert sorted(set(zip(kept.method, kept.language))) == [("procrustes", "deu"), ("shift", "deu")]
    calls.clear()
    monkeypatch.setattr(steer.evaluate, "steer", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    evaluate(tmp_path / "part", **options)
    assert len(calls) == 3, "only jpn's three settings run again"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "part" / "evaluation.csv"), full)
    assert not (tmp_path / "part" / ".evaluation.csv.resume.json").exists()


def test_a_job_takes_the_loading_options_as_one_value_or_field_by_field(tmp_path):
    from probes.model import Loading
    from xlalign.errors import JobError

    options = dict(model="random:llama", corpus=SMALL, sites="hidden", progress=False)
    by_field = jobs.capture(tmp_path / "a", dtype="bfloat16", **options)
    as_value = jobs.capture(tmp_path / "b", loading=Loading(dtype="bfloat16"), **options)
    assert by_field.model == as_value.model and by_field.model["dtype"] == "bfloat16"
    assert all(
        torch.equal(by_field.get(site, lang), as_value.get(site, lang))
        for site in by_field.sites
        for lang in by_field.languages
    )
    with pytest.raises(JobError, match="pass loading= or dtype, not both"):
        jobs.capture(tmp_path / "c", loading=Loading(), dtype="bfloat16", **options)
    assert not (tmp_path / "c").exists()
