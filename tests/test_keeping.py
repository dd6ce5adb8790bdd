"""The language-keeping settings: layers from the measured alignment profile, the sandwich's two edits, the sweep."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny
from probes.analysis import mexa
from probes.capture import capture
from probes.data import demo_corpus
from probes.find import gap_norm
from probes.model import Site
from steer.interventions import AddVector, Erase
from steer.keeping import SANDWICH_SCALES, SWEEP_SCALES, profile_layers
from steer.methods import fit_methods, settings


@pytest.fixture(scope="module")
def found():
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "rus"], 16)
    return corpus, fit_methods(
        model, tokenizer, corpus, languages=["deu", "rus"], methods=["diffmean", "erase", "sandwich"]
    )


@given(st.lists(st.floats(0, 1), min_size=3, max_size=30))
def test_peak_and_restore_follow_the_rule(values):
    profile = dict(enumerate(values, start=1))
    peak, restore = profile_layers(profile)
    last = len(values)
    assert peak < last and all(profile[peak] >= profile[layer] for layer in range(1, last))
    assert peak == min(layer for layer in range(1, last) if profile[layer] == profile[peak])
    bar = (profile[peak] + profile[last]) / 2
    below = [layer for layer in range(peak + 1, last) if profile[layer] < bar]
    assert restore == (below[0] if below else (last - 1 if peak + 1 < last else last))


def test_profile_is_mean_mexa_of_the_training_sentences(found):
    corpus, findings = found
    model, tokenizer = tiny("llama")
    sites = [Site(layer, "resid") for layer in range(1, 5)]
    pooled = {lang: capture(model, tokenizer, corpus.texts(lang), sites) for lang in ("eng", "deu", "rus")}
    for site in sites:
        expected = (mexa(pooled["eng"][site], pooled["deu"][site]) + mexa(pooled["eng"][site], pooled["rus"][site])) / 2
        assert findings.profile[site.layer] == pytest.approx(expected)


def test_sandwich_shifts_at_the_peak_and_restores_the_language_later(found):
    corpus, findings = found
    peak, restore = profile_layers(findings.profile)
    sandwiches = [s for s in settings(findings) if s.method == "sandwich"]
    assert len(sandwiches) == 1 and sandwiches[0].layer == peak
    (shift, gate), (back, _) = sandwiches[0].plan("deu", corpus.texts("deu"))
    vector = findings["diffmean"]["deu"]
    assert isinstance(shift, AddVector) and shift.layers == (peak,) and gate.only == ("deu",)
    assert shift.alpha == pytest.approx(SANDWICH_SCALES[-1] * gap_norm(vector, peak))
    assert back.layers == (restore,) and back.alpha == pytest.approx(-SANDWICH_SCALES[-1] * gap_norm(vector, restore))
    assert torch.equal(back.vectors[restore], vector.vectors[restore])
    swept = [s for s in settings(findings, sweep=True) if s.method == "sandwich"]
    assert len(swept) == len(SANDWICH_SCALES) + 1 and all(s.layer == peak for s in swept)
    (erased, _), (restored, _) = swept[-1].plan("deu", corpus.texts("deu"))
    assert isinstance(erased, Erase) and erased.layers == (peak,) and restored.layers == (restore,)


def test_sweep_covers_layers_and_strengths(found):
    _, findings = found
    plain = [s for s in settings(findings) if s.method == "diffmean"]
    swept = [s for s in settings(findings, sweep=True) if s.method == "diffmean"]
    assert {s.layer for s in plain} == {profile_layers(findings.profile)[0]}
    layers = {s.layer for s in swept}
    assert len(layers) >= 2 and len(swept) == len(layers) * len(SWEEP_SCALES)
    assert len({s.setting for s in settings(findings, sweep=True)}) == len(settings(findings, sweep=True))
