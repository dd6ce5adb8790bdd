"""LEACE compared as LEACE means it: after erasure every language's mean is the same point (the centroid of all,
not the pivot's), so the pair the closed loop measures is the erased pair, the pivot erased too."""

from __future__ import annotations

import pytest
import torch

from conftest import activations, tiny
from probes.analysis import PAIR_METRICS
from probes.capture import capture
from probes.data import demo_corpus
from probes.find import fit_eraser
from probes.model import Site
from steer.apply import steer
from steer.convert import erase
from steer.evaluate import evaluate
from steer.interventions import EditContext
from steer.methods import fit_methods, settings

LANGUAGES = ["eng", "deu", "rus"]
METRICS = ("mexa", "matched_random_gap")


def test_erased_class_means_coincide_at_the_centroid_not_at_the_pivot():
    """The library's guarantee, through our Erase: the erased class means are all the centroid of the fitting
    data; erasing one language only leaves it there, away from the unerased pivot's mean."""
    generator = torch.Generator().manual_seed(0)
    rows = {}
    for lang in LANGUAGES:
        rows[lang] = torch.randn(200, 16, generator=generator) + 3 * torch.randn(16, generator=generator)
    eraser = fit_eraser(activations({2: rows}), layers=[2])
    plan = erase(eraser, 1.0, [2])
    ctx = EditContext(site=Site(2, "resid"), tokens=None, selected=None)
    erased = {lang: plan.edit(x, ctx) for lang, x in rows.items()}
    centroid = torch.cat(list(rows.values())).mean(0)
    for lang in LANGUAGES:
        assert torch.allclose(erased[lang].mean(0), centroid, atol=1e-4), lang
    assert (erased["deu"].mean(0) - rows["eng"].mean(0)).norm() > 1.0, "one-sided erasure is not at the pivot"


@pytest.fixture(scope="module")
def found():
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(LANGUAGES, 24)
    train, test = corpus.split(test_fraction=0.5, seed=0)
    return test, fit_methods(model, tokenizer, train, languages=["deu", "rus"], methods=["erase"])


def test_the_measured_pair_is_the_erased_pair(found):
    """evaluate's 'on' MEXA after a LEACE setting equals MEXA of the erased pivot and the erased language, each
    captured directly under the plan; the pivot's loss is measured with the plan on."""
    test, findings = found
    model, tokenizer = tiny("llama")
    (setting,) = [s for s in settings(findings) if s.method == "erase"]
    ((item, schedule),) = setting.plan("deu", test.texts("deu"))
    assert schedule.only == ("deu", "eng"), "LEACE erases the pivot too"
    table = evaluate(model, tokenizer, test, [setting], languages=["deu"], metrics=list(METRICS), n_boot=10, n_loss=4)
    layer = setting.layer + 1
    site = Site(layer, "hidden")
    with steer(model, setting.plan("deu", test.texts("deu")), languages="deu"):
        german = capture(model, tokenizer, test.texts("deu"), [site], pooling="weighted")[site]
    with steer(model, setting.plan("deu", test.texts("eng")), languages="eng"):
        english = capture(model, tokenizer, test.texts("eng"), [site], pooling="weighted")[site]
    plain = capture(model, tokenizer, test.texts("eng"), [site], pooling="weighted")[site]
    unerased = capture(model, tokenizer, test.texts("deu"), [site], pooling="weighted")[site]
    for metric in METRICS:
        score = PAIR_METRICS[metric]
        row = table[(table.metric == metric) & (table.layer == layer)]
        assert row.on.item() == pytest.approx(score(english, german).double().mean().item()), metric
        assert row.off.item() == pytest.approx(score(plain, unerased).double().mean().item()), metric
    gap = PAIR_METRICS["matched_random_gap"]
    assert gap(english, german).mean() != pytest.approx(gap(plain, german).mean()), "the pivot side counts"
    loss = table[table.metric == "loss_pivot"]
    assert loss.on.item() != loss.off.item(), "the pivot's loss is measured erased"
