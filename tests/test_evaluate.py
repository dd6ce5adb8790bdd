"""Closed-loop evaluation: on/off numbers equal direct computations; gating keeps the pivot untouched."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from probes.analysis import mexa
from probes.capture import Tokenization, capture, capture_corpus, collect_stats
from probes.data import demo_corpus
from probes.find import LAPE, APExperts, LanguageIdentifier, fit_shift
from probes.model import Site
from steer.apply import steer
from steer.evaluate import COLUMNS, Setting, continuations, evaluate, next_token_loss
from steer.interventions import AddVector
from steer.schedule import Schedule


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus().subset(["eng", "deu", "rus"], 24)


def shift_setting(alpha: float) -> Setting:
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    return Setting("shift", f"alpha={alpha}", 2,
                   lambda lang, texts: [(AddVector({2: vector}, alpha), Schedule(languages=(lang,)))])


def test_evaluation_matches_direct_computation_and_keeps_pivot_untouched(corpus):
    model, tokenizer = tiny("llama")
    identifier = LanguageIdentifier().fit(corpus)
    table = evaluate(model, tokenizer, corpus, [shift_setting(0.0), shift_setting(3.0)], languages=["deu", "rus"],
                     identifier=identifier, n_boot=200, n_prompts=4)
    assert list(table.columns) == COLUMNS
    zero = table[table.setting == "alpha=0.0"]
    assert (zero.delta.abs() < 1e-12).all(), "a zero vector changes nothing"
    strong = table[(table.setting == "alpha=3.0") & (table.language == "rus")]
    assert (strong[strong.metric == "loss_pivot"].delta == 0).all(), "English runs are gated out"
    assert strong[strong.metric == "loss_target"].delta.item() != 0
    # 'on' at layer 3 equals MEXA computed by hand from a steered capture (MEXA's hidden sites, weighted pooling).
    site = Site(3, "hidden")
    english = capture(model, tokenizer, corpus.texts("eng"), [site], pooling="weighted")[site]
    with steer(model, shift_setting(3.0).plan("rus", []), languages="rus"):
        russian = capture(model, tokenizer, corpus.texts("rus"), [site], pooling="weighted")[site]
    row = strong[(strong.metric == "mexa") & (strong.layer == 3)]
    assert row.on.item() == pytest.approx(mexa(english, russian))
    assert row.ci_low.item() <= row.delta.item() <= row.ci_high.item()
    layers = strong[(strong.metric == "mexa") & (strong.layer >= 2)]
    summary = strong[strong.metric == "mexa_mean_after"]
    assert summary.on.item() == pytest.approx(layers.on.mean())
    assert set(strong.metric) >= {"lang_fidelity", "retrieval_top1", "retrieval_top1_mean_after"}


def test_pivot_loss_is_measured_when_the_plan_can_touch_the_pivot(corpus):
    """A gated plan's pivot pass is skipped: running it gives the unsteered loss bit for bit. An ungated plan's
    pivot loss is measured and equals a direct steered computation."""
    model, tokenizer = tiny("llama")
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    ungated = Setting("shift", "ungated", 2, lambda lang, texts: [AddVector({2: vector}, 3.0)])
    table = evaluate(model, tokenizer, corpus, [shift_setting(3.0), ungated], languages=["deu"], n_boot=10, n_loss=8)
    pivot = table[table.metric == "loss_pivot"].set_index("setting")
    english = corpus.texts("eng")[:8]
    plain = next_token_loss(model, tokenizer, english)
    with steer(model, shift_setting(3.0).plan("deu", []), languages="eng") as handle:
        assert not handle.touches("eng") and handle.touches("deu")
        assert next_token_loss(model, tokenizer, english) == plain == pivot.on["alpha=3.0"]
    with steer(model, ungated.plan("deu", []), languages="eng"):
        assert pivot.on["ungated"] == next_token_loss(model, tokenizer, english) != plain


def test_language_identifier_and_continuations(corpus):
    train, test = demo_corpus().subset(["eng", "deu", "rus", "jpn"]).split(test_fraction=0.25)
    identifier = LanguageIdentifier().fit(train)
    for lang in test.languages:
        predicted = identifier.predict(test.texts(lang))
        assert sum(p == lang for p in predicted) / len(predicted) >= 0.95, lang
    model, tokenizer = tiny("qwen3")
    prompts = corpus.texts("deu")[:5]
    batched = continuations(model, tokenizer, prompts, max_new_tokens=4, tokenization=Tokenization(batch_size=5))
    single = [continuations(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == single


def test_next_token_loss_is_padding_proof(corpus):
    model, tokenizer = tiny("gemma3_text")
    texts = corpus.texts("deu")[:6]
    assert next_token_loss(model, tokenizer, texts, tokenization=Tokenization(batch_size=6)) == pytest.approx(
        next_token_loss(model, tokenizer, texts, tokenization=Tokenization(batch_size=1)), rel=1e-6)


def test_one_pass_fitting_equals_each_finder_run_alone(corpus):
    from steer.methods import fit_methods

    model, tokenizer = tiny("qwen2")
    found = fit_methods(model, tokenizer, corpus, languages=["deu"], methods=["shift", "lape", "ap"],
                        lape_languages=["eng", "deu", "rus"], ap_k=7)
    gates = [Site(layer, "mlp_gate") for layer in range(1, 5)]
    lape = LAPE().fit(collect_stats(model, tokenizer, corpus, gates, languages=["eng", "deu", "rus"], bins=0)).neurons_
    assert found.lape.languages == lape.languages
    assert all(torch.equal(found.lape.neurons[lang], lape.neurons[lang]) for lang in lape.languages)
    sites = [Site(layer, "mlp_act") for layer in range(1, 5)]
    ap = APExperts(k=7).fit(capture_corpus(model, tokenizer, corpus, sites, languages=["eng", "deu"])).neurons_
    assert torch.equal(found.ap.neurons["eng"], ap.neurons["eng"])
    data = capture_corpus(model, tokenizer, corpus, [Site(2, "resid")], languages=["eng", "deu"])
    torch.testing.assert_close(found.shifts["deu"].vectors[2], fit_shift(data, "deu").vectors[2])


@pytest.mark.parametrize("n_loss", [5, 9])
def test_pooling_during_the_loss_equals_capture_and_the_loss_alone(corpus, monkeypatch, n_loss):
    """The evaluation pools the loss texts during the loss's own passes (here split into parts of one row)."""
    import steer.evaluate as evaluation

    monkeypatch.setattr(evaluation, "LOGITS_PER_CALL", 1)
    model, tokenizer = tiny("qwen3")
    texts = corpus.texts("rus")[:9]
    sites = [Site(0, "resid"), Site(2, "resid"), Site(3, "mlp_out")]
    tokenization = Tokenization(batch_size=4)
    pooled, loss = evaluation.pooled_and_loss(model, tokenizer, texts, sites, n_loss=n_loss, tokenization=tokenization)
    expected = capture(model, tokenizer, texts, sites, tokenization=tokenization)
    for site in sites:
        torch.testing.assert_close(pooled[site], expected[site], atol=1e-5, rtol=1e-5)
    assert loss == next_token_loss(model, tokenizer, texts[:n_loss], tokenization=tokenization)
