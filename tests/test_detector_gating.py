"""Gating by the model's own language detection: a probe on an early layer, run inside the forward pass, picks
each example's intervention; it equals gating by the true language wherever the detector is right, with and
without KV cache, and equals gating by what it detects everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny
from probes.analysis import Activations
from probes.analysis.langid import probe_pipeline
from probes.artifacts import load_artifact
from probes.capture import capture
from probes.data import demo_corpus
from probes.find import fit_detector
from probes.model import Site, model_identity
from steer.apply import steer
from steer.interventions import AddVector, InterventionError
from steer.schedule import gated

LANGUAGES = ["eng", "deu", "rus", "jpn"]
DETECT = Site(1, "resid")


@pytest.fixture(scope="module")
def split():
    return demo_corpus().subset(LANGUAGES).split(test_fraction=0.25, seed=0)


def pooled(corpus, n: int | None = None) -> dict[str, torch.Tensor]:
    model, tokenizer = tiny("llama")
    return {lang: capture(model, tokenizer, corpus.texts(lang)[:n], [DETECT])[DETECT] for lang in LANGUAGES}


@pytest.fixture(scope="module")
def detector(split):
    train, _ = split
    vectors = pooled(train, n=6)  # few sentences: a detector that sometimes errs
    acts = Activations(
        {(DETECT, lang): x for lang, x in vectors.items()}, model=model_identity(tiny("llama")[0]), pooling="mean"
    )
    return vectors, fit_detector(acts, DETECT.layer)


def test_detector_equals_its_sklearn_pipeline_and_round_trips(split, detector, tmp_path):
    _, test = split
    vectors, found = detector
    x = torch.cat([vectors[lang] for lang in LANGUAGES]).double().numpy()
    y = np.repeat(np.arange(len(LANGUAGES)), [len(vectors[lang]) for lang in LANGUAGES])
    reference = probe_pipeline(1.0, 2000).fit(x, y)
    held_out = torch.cat(list(pooled(test).values()))
    assert found.predict(held_out) == [LANGUAGES[i] for i in reference.predict(held_out.double().numpy())]
    loaded = load_artifact(found.save(tmp_path / "detector.safetensors"), model=tiny("llama")[0])
    assert loaded.predict(held_out) == found.predict(held_out)


def plan(model) -> list:
    """A different vector for German and for Russian at layer 3 (English: none)."""
    size = model.config.hidden_size
    vectors = {
        lang: torch.randn(size, generator=torch.Generator().manual_seed(i)) * 4 for i, lang in enumerate(["deu", "rus"])
    }
    return [(AddVector({3: vectors[lang]}), gated([lang])) for lang in vectors]


def generate(model, tokenizer, prompts, languages, use_cache: bool) -> torch.Tensor:
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    with steer(model, plan(model), languages=languages), torch.inference_mode():
        return model.generate(
            **batch, max_new_tokens=5, do_sample=False, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id
        )


@pytest.mark.parametrize("use_cache", [True, False])
def test_detected_gating_equals_true_gating_where_the_detector_is_right(split, detector, use_cache):
    model, tokenizer = tiny("llama")
    _, test = split
    _, found = detector
    prompts, truth = [], []
    for lang in LANGUAGES:
        prompts += test.texts(lang)[:4]
        truth += [lang] * 4
    detected = found.predict(torch.cat([capture(model, tokenizer, [p], [DETECT])[DETECT] for p in prompts]))
    by_detector = generate(model, tokenizer, prompts, found, use_cache)
    by_truth = generate(model, tokenizer, prompts, truth, use_cache)
    by_detected_labels = generate(model, tokenizer, prompts, detected, use_cache)
    assert torch.equal(by_detector, by_detected_labels), "the detector gates as its own predictions say"
    right = [i for i, (d, t) in enumerate(zip(detected, truth)) if d == t]
    assert len(right) >= len(prompts) // 2
    assert torch.equal(by_detector[right], by_truth[right])
    steered = {i for i, lang in enumerate(detected) if lang in ("deu", "rus")}
    plain = generate(model, tokenizer, prompts, "eng", use_cache)
    changed = {i for i in range(len(prompts)) if not torch.equal(by_detector[i], plain[i])}
    assert changed <= steered and changed, "only examples detected as German or Russian are steered"


def test_cached_equals_uncached_under_detection(split, detector):
    model, tokenizer = tiny("llama")
    _, test = split
    prompts = [test.texts(lang)[5] for lang in LANGUAGES]
    _, found = detector
    assert torch.equal(
        generate(model, tokenizer, prompts, found, True), generate(model, tokenizer, prompts, found, False)
    )


def test_a_plan_editing_at_or_before_the_detector_layer_is_refused(detector):
    model, _ = tiny("llama")
    _, found = detector
    with pytest.raises(InterventionError, match="only edit later layers"):
        with steer(model, [AddVector({1: torch.zeros(model.config.hidden_size)})], languages=found):
            pass


def test_detection_gating_cannot_be_switched_on_or_off_on_an_open_handle(detector):
    """Its hook is registered with the plan: set_languages refuses a detector, and a detector-gated handle refuses
    codes, instead of gating silently on stale or missing detections."""
    model, _ = tiny("llama")
    _, found = detector
    vector = torch.zeros(model.config.hidden_size)
    with steer(model, [(AddVector({3: vector}), gated(["deu"]))], languages="deu") as handle:
        with pytest.raises(InterventionError, match="set when the plan is applied"):
            handle.set_languages(found)
        handle.set_languages(["deu", "eng"])
        assert handle.languages == ("deu", "eng") and handle.detector is None
    with steer(model, [(AddVector({3: vector}), gated(["deu"]))], languages=found) as handle:
        with pytest.raises(InterventionError, match="set_languages takes language codes"):
            handle.set_languages("deu")
        assert handle.detector is found
