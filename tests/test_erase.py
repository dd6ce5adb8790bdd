"""LEACE language erasure: the concept-erasure library's transform, applied inside the model, leaves a linear
language probe at chance on held-out sentences; the artifact round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concept_erasure import LeaceEraser, LeaceFitter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import tiny
from probes.analysis import Activations
from probes.artifacts import Eraser, load_artifact
from probes.capture import capture, record
from probes.data import demo_corpus
from probes.find import fit_eraser
from probes.model import Site
from steer.apply import steer
from steer.convert import erase, to_intervention
from steer.interventions import InterventionError

LANGUAGES = ["eng", "deu", "fra", "rus", "zho-CN", "hin"]
SITE = Site(2, "resid")


@pytest.fixture(scope="module")
def split():
    return demo_corpus().subset(LANGUAGES).split(test_fraction=0.3, seed=0)


def pooled(corpus, plan=()) -> dict[str, torch.Tensor]:
    model, tokenizer = tiny("llama")
    with steer(model, list(plan)):
        return {lang: capture(model, tokenizer, corpus.texts(lang), [SITE])[SITE] for lang in LANGUAGES}


@pytest.fixture(scope="module")
def fitted(split):
    train, _ = split
    vectors = pooled(train)
    acts = Activations({(SITE, lang): x for lang, x in vectors.items()}, model={"name": "tiny"}, pooling="mean")
    return vectors, fit_eraser(acts, layers=[SITE.layer])


def probe_accuracy(train: dict, test: dict) -> float:
    """Held-out accuracy of a standardised logistic-regression language probe."""

    def stack(data):
        return torch.cat([data[lang] for lang in LANGUAGES]).numpy(), np.repeat(
            np.arange(len(LANGUAGES)), [len(data[lang]) for lang in LANGUAGES]
        )

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(*stack(train))
    return probe.score(*stack(test))


def test_eraser_is_the_librarys_fit_on_one_hot_languages(fitted):
    vectors, eraser = fitted
    x = torch.cat([vectors[lang] for lang in LANGUAGES]).double()
    z = torch.zeros(len(x), len(LANGUAGES), dtype=torch.float64)
    z[torch.arange(len(x)), torch.arange(len(LANGUAGES)).repeat_interleave(len(vectors["eng"]))] = 1
    reference = LeaceFitter.fit(x, z).eraser
    probe = torch.randn(20, x.shape[1], generator=torch.Generator().manual_seed(0)).double()
    ours = LeaceEraser(eraser.proj_left[2].double(), eraser.proj_right[2].double(), eraser.bias[2].double())
    assert torch.allclose(ours(probe), reference(probe), atol=1e-4)
    assert eraser.languages == tuple(LANGUAGES)


def test_erasing_inside_the_model_is_the_library_transform_on_every_token(fitted):
    """The layer's output under Erase equals LeaceEraser applied to the unsteered output, token by token."""
    model, tokenizer = tiny("llama")
    _, eraser = fitted
    texts = demo_corpus().texts("deu")[:5]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with record(model, [SITE]) as plain:
        model(**batch)
    with steer(model, [erase(eraser)]), record(model, [SITE]) as steered:
        model(**batch)
    library = LeaceEraser(eraser.proj_left[2], eraser.proj_right[2], eraser.bias[2])
    for before, after in zip(plain.tokens(SITE), steered.tokens(SITE), strict=True):
        assert torch.allclose(after, library(before), atol=1e-5)


def test_erased_layer_leaves_a_language_probe_at_chance_on_held_out_sentences(split, fitted):
    train, test = split
    vectors, eraser = fitted
    before = probe_accuracy(vectors, pooled(test))
    plan = [erase(eraser)]
    after = probe_accuracy(pooled(train, plan), pooled(test, plan))
    chance = 1 / len(LANGUAGES)
    assert before > 0.8, "the probe tells the languages apart before erasure"
    assert after <= chance + 0.05, f"held-out probe accuracy {after:.3f} after erasure; chance is {chance:.3f}"


def test_eraser_artifact_round_trips_and_converts(tmp_path, fitted):
    _, eraser = fitted
    path = eraser.save(tmp_path / "eraser.safetensors")
    loaded = load_artifact(path)
    assert isinstance(loaded, Eraser) and loaded.languages == eraser.languages and loaded.layers == [2]
    for part in ("proj_left", "proj_right", "bias"):
        assert torch.equal(getattr(loaded, part)[2], getattr(eraser, part)[2])
    half = to_intervention(loaded, strength=0.5)
    x = torch.randn(1, 3, 64)
    full = erase(loaded).edit(x, _context())
    assert torch.allclose(half.edit(x, _context()), x + 0.5 * (full - x), atol=1e-6)
    with pytest.raises(InterventionError, match="no layers \\[5\\]"):
        erase(loaded, layers=[5])


def _context():
    from steer.interventions import EditContext

    return EditContext(site=SITE, tokens=None, selected=None)
