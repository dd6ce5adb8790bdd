"""A Bundle (model, tokenizer, tokenisation) in place of the three: every public function that takes them takes
it, with the same results as the three passed separately."""

from __future__ import annotations

import inspect

import pytest
import torch

import xlalign as xl
from conftest import TEXTS, tiny
from probes.capture import Bundle, Tokenization
from probes.capture.bundle import takes_bundle
from probes.data import demo_corpus
from probes.model import Site
from steer.interventions import AddVector
from xlalign import jobs

TOKENIZATION = Tokenization(batch_size=2, exclude_bos=True)  # not the default: the bundle must carry it
CORPUS = demo_corpus().subset(["eng", "deu"], 6)
SITE = Site(2, "resid")


LOADERS = {"resolve_model", "nnsight_model", "transformer_bridge"}  # they make the model a bundle holds


def test_every_public_function_of_model_and_tokenizer_takes_a_bundle():
    bundled = takes_bundle(lambda model: model).__code__  # the wrapper every such function has
    taking = []
    for name in sorted(set(xl.__all__) - LOADERS):
        value = getattr(xl, name)
        if inspect.isfunction(value):
            parameters = list(inspect.signature(value).parameters)
            if parameters[:2] == ["model", "tokenizer"]:
                taking.append(name)
                assert value.__code__ is bundled, f"xl.{name} does not take a Bundle"
    assert {"capture", "capture_corpus", "trace", "collect_stats", "next_token_loss", "continuations"} <= set(taking)


def test_a_bundle_gives_what_the_three_give():
    model, tokenizer = tiny("llama")
    bundle = Bundle(model, tokenizer, TOKENIZATION)
    pooled = xl.capture_corpus(bundle, CORPUS, [SITE])
    expected = xl.capture_corpus(model, tokenizer, CORPUS, [SITE], tokenization=TOKENIZATION)
    assert torch.equal(pooled.get(SITE, "deu"), expected.get(SITE, "deu"))
    assert not torch.equal(
        pooled.get(SITE, "deu"), xl.capture_corpus(model, tokenizer, CORPUS, [SITE]).get(SITE, "deu")
    )
    traced, plain = (
        xl.trace(bundle, TEXTS[:3], [SITE]),
        xl.trace(model, tokenizer, TEXTS[:3], [SITE], tokenization=TOKENIZATION),
    )
    assert all(torch.equal(a, b) for a, b in zip(traced.tokens(SITE), plain.tokens(SITE)))
    assert xl.next_token_loss(bundle, TEXTS) == xl.next_token_loss(model, tokenizer, TEXTS, tokenization=TOKENIZATION)
    vector = AddVector({2: 4 * torch.ones(64)})
    with xl.steer(bundle, [vector]):
        steered = xl.continuations(bundle, TEXTS[:2], max_new_tokens=3)
    with xl.steer(model, [vector]):
        assert steered == xl.continuations(model, tokenizer, TEXTS[:2], max_new_tokens=3, tokenization=TOKENIZATION)
    with pytest.raises(ValueError, match="the bundle holds the tokenizer and tokenization"):
        xl.capture_corpus(bundle, CORPUS, [SITE], tokenization=Tokenization())
    by_keyword = xl.capture_corpus(model=bundle, corpus=CORPUS, sites=[SITE])  # the model as a keyword too
    assert torch.equal(by_keyword.get(SITE, "deu"), expected.get(SITE, "deu"))
    plain_keywords = xl.capture_corpus(
        model=model, tokenizer=tokenizer, corpus=CORPUS, sites=[SITE], tokenization=TOKENIZATION
    )
    assert torch.equal(plain_keywords.get(SITE, "deu"), expected.get(SITE, "deu"))


def test_a_job_takes_a_bundle_as_its_model(tmp_path):
    model, tokenizer = tiny("llama")
    store = jobs.capture(
        tmp_path / "s", model=Bundle(model, tokenizer, TOKENIZATION), corpus=CORPUS, sites="resid.2", progress=False
    )
    expected = xl.capture_corpus(model, tokenizer, CORPUS, [SITE], pooling="weighted", tokenization=TOKENIZATION)
    assert torch.allclose(store.get(SITE, "eng"), expected.get(SITE, "eng"))
    with pytest.raises(ValueError, match="the bundle holds the tokenizer and tokenization"):
        jobs.capture(tmp_path / "t", model=Bundle(model, tokenizer), tokenizer=tokenizer, corpus=CORPUS, progress=False)
