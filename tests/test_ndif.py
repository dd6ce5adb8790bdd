"""The NDIF path, run offline as NDIF would run it (nnsight's ``remote="local"``: the request serialised and
executed with a plain-torch body): pooled capture and steered generation equal the hf backend's on four
families, and a real remote run without a key or a reachable service fails before any work, never storing the
key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, TEXTS, every_site, left_padded, through, tiny
from probes.capture import Tokenization, capture
from probes.capture.remote import capture_remote
from probes.model import BackendError, Site
from steer.apply import steer
from steer.interventions import AddVector, InterventionError, ZeroNeurons
from steer.remote import generate_remote


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_capture_equals_hf_capture(family):
    model, tokenizer = tiny(family)
    lm = through("nnsight", family)
    sites = [site for site in every_site(model) if site.component != "router"]
    tokenization = Tokenization(padding_side="left", batch_size=3)
    for pooling in ("weighted", "last"):
        expected = capture(model, tokenizer, TEXTS, sites, pooling=pooling, tokenization=tokenization)
        pooled = capture_remote(lm, tokenizer, TEXTS, sites, pooling=pooling, remote="local", tokenization=tokenization)
        for site in sites:
            torch.testing.assert_close(pooled[site], expected[site], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_steered_generation_equals_hf_steering(family):
    model, tokenizer = tiny(family)
    lm = through("nnsight", family)
    ids, mask = left_padded(tokenizer, TEXTS[:4])
    generator = torch.Generator().manual_seed(2)
    plan = [
        AddVector({2: torch.randn(64, generator=generator)}, alpha=3.0),
        AddVector({3: torch.randn(64, generator=generator)}, alpha=2.0, component="mlp_out"),
    ]
    options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **options)
        with steer(model, plan):
            expected = model.generate(input_ids=ids, attention_mask=mask, **options)
    tokens = generate_remote(lm, ids, mask, plan, max_new_tokens=6, remote="local", pad_token_id=tokenizer.pad_token_id)
    assert not torch.equal(expected, plain), "the plan must change the tokens"
    assert torch.equal(tokens, expected)


def test_what_the_remote_path_cannot_do_is_a_clear_error():
    model, tokenizer = tiny("mixtral")
    lm = through("nnsight", "mixtral")
    with pytest.raises(BackendError, match="router.2: router sites are not captured remotely"):
        capture_remote(lm, tokenizer, TEXTS[:2], [Site(2, "router")], remote="local")
    dense = through("nnsight", "llama")
    ids, mask = left_padded(tokenizer, TEXTS[:2])
    with pytest.raises(InterventionError, match="plan item 0: remote generation applies AddVector"):
        generate_remote(dense, ids, mask, [ZeroNeurons({2: torch.tensor([1])})], max_new_tokens=2, remote="local")
    with pytest.raises(BackendError, match="needs an nnsight model"):
        capture_remote(model, tokenizer, TEXTS[:2], [Site(1, "resid")])


def test_a_real_ndif_run_without_key_or_service_fails_before_any_work_and_never_stores_the_key(monkeypatch):
    import nnsight

    _, tokenizer = tiny("llama")
    lm = through("nnsight", "llama")
    config_file = Path(nnsight.__file__).parent / "config.yaml"
    saved_config = config_file.read_text()
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(BackendError, match="set the environment variable NDIF_API_KEY"):
        capture_remote(lm, tokenizer, TEXTS[:2], [Site(1, "resid")], remote=True)
    monkeypatch.setenv("NDIF_API_KEY", "secret-key-for-the-test")
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    ids, mask = left_padded(tokenizer, TEXTS[:2])
    with pytest.raises(BackendError, match="is unreachable or does not serve"):
        generate_remote(lm, ids, mask, [AddVector({2: torch.ones(64)})], max_new_tokens=2, remote=True)
    assert config_file.read_text() == saved_config and "secret-key" not in saved_config


def test_a_remote_store_equals_the_hf_store_and_the_cli_refuses_before_writing(tmp_path, monkeypatch, capsys):
    from probes.capture import ActivationStore
    from probes.data import demo_corpus
    from xlalign import jobs
    from xlalign.cli import main

    model, tokenizer = tiny("gemma3_text")
    corpus = demo_corpus().subset(["eng", "jpn"], 6)
    options = dict(corpus=corpus, sites="resid,mlp_out,hidden", progress=False)
    ours = jobs.capture(tmp_path / "hf", model=model, tokenizer=tokenizer, **options)
    remote = jobs.capture(
        tmp_path / "remote",
        model=through("nnsight", "gemma3_text"),
        tokenizer=tokenizer,
        backend="nnsight",
        remote="local",
        **options,
    )
    assert remote.sites == ours.sites and remote.model == ours.model
    for site in ours.sites:
        for language in ("eng", "jpn"):
            torch.testing.assert_close(remote.get(site, language), ours.get(site, language), atol=1e-5, rtol=0)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    out = tmp_path / "refused"
    argv = ["capture", "--model", "random:llama", "--corpus", "demo", "--remote", "--out", str(out)]
    assert main([*argv, "--backend", "nnsight"]) == 2
    assert "NDIF_API_KEY" in capsys.readouterr().err and not out.exists()
    assert main(argv) == 2  # --remote without --backend nnsight
    assert "backend='nnsight'" in capsys.readouterr().err and not out.exists()
    assert ActivationStore(tmp_path / "hf").languages == ["eng", "jpn"]
