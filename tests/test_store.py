"""ActivationStore: equal to a direct capture, resumable bit for bit, and strict about what it mixes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import probes.capture.store
from conftest import tiny
from probes.analysis import Activations
from probes.capture import ActivationStore, StoreError, Tokenization, capture, capture_corpus, capture_to_store
from probes.data import demo_corpus
from probes.model import Site

SITES = [Site(0, "resid"), Site(2, "resid"), Site(3, "mlp_act"), Site(1, "head")]
OPTIONS = dict(shard_size=8, tokenization=Tokenization(batch_size=3))


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus().subset(["eng", "deu", "jpn"], 20)


def test_store_equals_direct_capture_per_shard(tmp_path, corpus):
    model, tokenizer = tiny("llama")
    store = capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "s", pooling="max", **OPTIONS)
    assert store.languages == ["eng", "deu", "jpn"] and store.sites == sorted(SITES)
    texts = corpus.texts("jpn")
    for site in SITES:
        got = store.get(site, "jpn")
        parts = [
            capture(model, tokenizer, texts[i : i + 8], [site], pooling="max", tokenization=Tokenization(batch_size=3))[
                site
            ]
            for i in range(0, len(texts), 8)
        ]
        assert torch.equal(got, torch.cat(parts))
    assert store.get(Site(1, "head"), "eng").shape == (20, 4, 16)


def test_store_and_in_memory_activations_share_one_interface(tmp_path, corpus):
    model, tokenizer = tiny("llama")
    store = capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "s", shard_size=32)
    memory = capture_corpus(model, tokenizer, corpus, SITES)
    assert isinstance(store, Activations) and isinstance(memory, Activations)
    assert store.sites == memory.sites and store.languages == memory.languages and len(store) == len(memory) == 20
    assert store.pooling == memory.pooling == "mean" and store.model == dict(memory.model)
    for (layer, ours), (other_layer, theirs) in zip(store.by_layer("resid"), memory.by_layer("resid")):
        assert layer == other_layer and all(torch.equal(ours[lang], theirs[lang]) for lang in ours)
    assert torch.equal(store[Site(1, "head"), "deu"], memory.get("head.1", "deu"))
    with pytest.raises(StoreError, match="no resid layers \\[1\\]"):
        next(store.by_layer("resid", layers=[1]))


def test_interrupted_capture_resumes_to_an_identical_store(tmp_path, corpus, monkeypatch):
    model, tokenizer = tiny("gpt2")
    reference = capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "full", **OPTIONS)

    calls, interrupt = [], [True]
    real_capture = probes.capture.store.capture

    def interrupt_on_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5 and interrupt:
            raise KeyboardInterrupt
        return real_capture(*args, **kwargs)

    monkeypatch.setattr(probes.capture.store, "capture", interrupt_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "resumed", **OPTIONS)
    partial = ActivationStore(tmp_path / "resumed")
    assert partial.missing_shards("eng") == [] and partial.missing_shards("deu") == [1, 2]
    with pytest.raises(StoreError, match="incomplete"):
        partial.get(SITES[0], "deu")

    calls.clear()
    interrupt.clear()
    resumed = capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "resumed", **OPTIONS)
    assert len(calls) == 9 - 4, "only the missing shards are computed"
    for lang in corpus.languages:
        for index in range(3):
            assert resumed.shard(lang, index).read_bytes() == reference.shard(lang, index).read_bytes()
    assert not list((tmp_path / "resumed").rglob("*.tmp"))


def test_mixing_models_poolings_or_corpora_is_an_error(tmp_path, corpus):
    model, tokenizer = tiny("llama")
    out = tmp_path / "s"
    capture_to_store(model, tokenizer, corpus, SITES, out, **OPTIONS)
    with pytest.raises(StoreError, match="pooling: store has 'mean', this capture has 'last'"):
        capture_to_store(model, tokenizer, corpus, SITES, out, pooling="last", **OPTIONS)
    other_model, other_tokenizer = tiny("qwen2")
    with pytest.raises(StoreError, match="model model_type: recorded 'llama', model has 'qwen2'"):
        capture_to_store(other_model, other_tokenizer, corpus, SITES, out, **OPTIONS)
    half = copy.deepcopy(model).to(torch.bfloat16)  # the same weights, other numbers: not mixed into one store
    with pytest.raises(StoreError, match="model dtype: recorded 'float32', model has 'bfloat16'"):
        capture_to_store(half, tokenizer, corpus, SITES, out, **OPTIONS)
    with pytest.raises(
        StoreError, match="tokenization: store has .*'batch_size': 3.*this capture has .*'batch_size': 4"
    ):
        capture_to_store(model, tokenizer, corpus, SITES, out, shard_size=8, tokenization=Tokenization(batch_size=4))
    changed = demo_corpus().subset(["eng", "deu", "jpn"], 21)
    with pytest.raises(StoreError, match="language 'eng'.*different corpus text.*20 sentences.*21 sentences"):
        capture_to_store(model, tokenizer, changed, SITES, out, **OPTIONS)
    with pytest.raises(StoreError, match="sites"):
        capture_to_store(model, tokenizer, corpus, SITES[:2], out, **OPTIONS)
    # A new language with the same settings extends the store.
    capture_to_store(model, tokenizer, demo_corpus().subset(["kor"], 20), SITES, out, **OPTIONS)
    assert ActivationStore(out).languages == ["eng", "deu", "jpn", "kor"]


def test_store_errors_name_what_is_missing(tmp_path, corpus):
    (tmp_path / "notes.txt").write_text("mine")
    model, tokenizer = tiny("llama")
    with pytest.raises(StoreError, match="not an activation store"):
        capture_to_store(model, tokenizer, corpus, SITES, tmp_path, **OPTIONS)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreError, match="no meta.json"):
        ActivationStore(tmp_path / "absent")
    store = capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "s", **OPTIONS)
    with pytest.raises(StoreError, match="site mlp_out.2 was not captured"):
        store.get(Site(2, "mlp_out"), "eng")
    with pytest.raises(StoreError, match="language 'fra' not captured; have eng, deu, jpn"):
        store.get(SITES[0], "fra")


def test_a_store_of_another_format_is_refused(tmp_path, corpus):
    model, tokenizer = tiny("llama")
    store = capture_to_store(model, tokenizer, corpus, SITES[:1], tmp_path / "s", **OPTIONS)
    meta = json.loads((store.path / "meta.json").read_text())
    meta.pop("format")  # as xlalign 0.1 wrote it
    (store.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="store format 1; this xlalign .* reads format 3: capture it again"):
        ActivationStore(store.path)
