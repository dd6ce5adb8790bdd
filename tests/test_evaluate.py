"""Closed-loop evaluation: on/off numbers equal direct computations; gating keeps the pivot untouched."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from probes.analysis import OutputLanguage, mexa
from probes.capture import Tokenization, capture, capture_corpus, collect_stats
from probes.data import demo_corpus
from probes.find import LAPE, APExperts, fit_shift
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
    return Setting(
        "shift", f"alpha={alpha}", 2, lambda lang, texts: [(AddVector({2: vector}, alpha), Schedule(only=(lang,)))]
    )


def test_evaluation_matches_direct_computation_and_keeps_pivot_untouched(corpus):
    model, tokenizer = tiny("llama")
    table = evaluate(
        model,
        tokenizer,
        corpus,
        [shift_setting(0.0), shift_setting(3.0)],
        languages=["deu", "rus"],
        fidelity=OutputLanguage(min_tokens=1),
        n_boot=200,
        n_prompts=4,
    )
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
    assert set(strong.metric) >= {"line_fidelity", "word_fidelity", "retrieval_top1", "retrieval_top1_mean_after"}
    german = table[(table.setting == "alpha=3.0") & (table.language == "deu")]
    assert "word_fidelity" not in set(german.metric), "no word level for a Latin-script language"
    # The fidelity rows are the pass rates of the continuations, computed directly.
    prompts = corpus.texts("rus")[:4]
    with steer(model, shift_setting(3.0).plan("rus", []), languages="rus"):
        steered = continuations(model, tokenizer, prompts)
    line = strong[strong.metric == "line_fidelity"]
    expected = OutputLanguage(min_tokens=1).line_pass_rate(steered, "rus")
    assert line.on.item() == pytest.approx(expected, nan_ok=True)


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


def test_batched_continuations_equal_one_by_one(corpus):
    model, tokenizer = tiny("qwen3")
    prompts = corpus.texts("deu")[:5]
    batched = continuations(model, tokenizer, prompts, max_new_tokens=4, tokenization=Tokenization(batch_size=5))
    single = [continuations(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == single


def test_next_token_loss_is_padding_proof(corpus):
    model, tokenizer = tiny("gemma3_text")
    texts = corpus.texts("deu")[:6]
    assert next_token_loss(model, tokenizer, texts, tokenization=Tokenization(batch_size=6)) == pytest.approx(
        next_token_loss(model, tokenizer, texts, tokenization=Tokenization(batch_size=1)), rel=1e-6
    )


def test_one_pass_fitting_equals_each_finder_run_alone(corpus):
    from steer.methods import fit_methods

    model, tokenizer = tiny("qwen2")
    found = fit_methods(
        model,
        tokenizer,
        corpus,
        languages=["deu"],
        methods=["shift", "lape", "ap"],
        lape_languages=["eng", "deu", "rus"],
        ap_k=7,
    )
    gates = [Site(layer, "mlp_gate") for layer in range(1, 5)]
    lape = LAPE().fit(collect_stats(model, tokenizer, corpus, gates, languages=["eng", "deu", "rus"], bins=0)).neurons_
    assert found["lape"].languages == lape.languages
    assert all(torch.equal(found["lape"].neurons[lang], lape.neurons[lang]) for lang in lape.languages)
    sites = [Site(layer, "mlp_act") for layer in range(1, 5)]
    ap = APExperts(k=7).fit(capture_corpus(model, tokenizer, corpus, sites, languages=["eng", "deu"])).neurons_
    assert torch.equal(found["ap"]["mlp_act"].neurons["eng"], ap.neurons["eng"])
    data = capture_corpus(model, tokenizer, corpus, [Site(2, "resid")], languages=["eng", "deu"])
    torch.testing.assert_close(found["shift"]["deu"].vectors[2], fit_shift(data, "deu").vectors[2])


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


def test_gating_by_detection_equals_true_gating_where_the_detector_is_right(corpus):
    """A detector fitted on these very sentences identifies them all: the detected twin of a setting then gives
    the true-gated rows (the pivot's loss is measured, not assumed), and the detection accuracy row is 1."""
    from probes.analysis import Activations
    from probes.find import fit_detector
    from probes.model import model_identity
    from steer.evaluate import gated_by_detection

    model, tokenizer = tiny("llama")
    site = Site(1, "resid")
    pooled = {lang: capture(model, tokenizer, corpus.texts(lang), [site])[site] for lang in corpus.languages}
    detector = fit_detector(
        Activations({(site, lang): x for lang, x in pooled.items()}, model=model_identity(model), pooling="mean"), 1
    )
    assert all(detector.predict(x) == [lang] * len(x) for lang, x in pooled.items())
    setting = shift_setting(3.0)
    (detected,) = gated_by_detection([setting], detector.layer)
    assert detected.setting == "alpha=3.0,gate=detected" and gated_by_detection([setting], 2) == []
    table = evaluate(
        model, tokenizer, corpus, [setting, detected], languages=["rus"], detector=detector, n_boot=10, n_loss=8
    )
    true, found = (
        table[table.setting == name].set_index(["metric", "layer"]) for name in (setting.setting, detected.setting)
    )
    shared = true.index.intersection(found.index)
    assert len(shared) == len(true) and (true.loc[shared, "on"] == found.loc[shared, "on"]).all()
    assert found.loc[("detection_accuracy", 2), "on"] == 1.0
    with pytest.raises(ValueError, match="pass a detector"):
        evaluate(model, tokenizer, corpus, [detected], languages=["rus"], n_boot=10, n_loss=8)
