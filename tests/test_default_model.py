"""The embedded Gemma 3 270M on real NTREX data: translations are retrievable in the middle layers, and it can
translate few-shot."""

from __future__ import annotations

import pytest

from conftest import ntrex_path
from probes.analysis import measure, retrieval_top1
from probes.capture import Tokenization, capture_corpus
from probes.data import read_ntrex
from probes.model import DEFAULT_MODEL_NAME, Site, cache_dir, load_model, n_layers
from reference_mexa import reference_mexa
from steer.translation import chrf, source_tokens, translate, translation_task


@pytest.fixture(scope="module")
def gemma():
    return load_model("default")


@pytest.mark.slow
def test_default_model_is_cached_gemma3(gemma):
    model, tokenizer = gemma
    assert model.config.name_or_path == DEFAULT_MODEL_NAME and model.config.model_type == "gemma3_text"
    assert n_layers(model) == 18 and model.config.hidden_size == 640
    assert (cache_dir() / "gemma-3-270m" / "model.safetensors").is_file()
    assert not list(cache_dir().glob(".convert-*")), "no half-converted model is left behind"


@pytest.mark.slow
def test_retrieval_vs_english_peaks_in_the_middle_layers(gemma):
    model, tokenizer = gemma
    corpus = read_ntrex(ntrex_path()).subset(["eng", "deu", "zho-CN"], 100)
    depth = n_layers(model)
    sites = [Site(layer, "resid") for layer in range(depth + 1)]
    acts = capture_corpus(model, tokenizer, corpus, sites, pooling="mean")
    scores = {
        lang: [retrieval_top1(acts.get(site, "eng"), acts.get(site, lang)) for site in sites]
        for lang in ("deu", "zho-CN")
    }
    best = {lang: max(range(depth + 1), key=values.__getitem__) for lang, values in scores.items()}
    print({lang: (best[lang], round(scores[lang][best[lang]], 3)) for lang in scores})
    assert scores["deu"][best["deu"]] >= 0.85
    assert scores["zho-CN"][best["zho-CN"]] >= 0.75
    for lang, layer in best.items():
        assert 0.25 * depth <= layer <= 0.85 * depth, f"{lang}: best layer {layer} of {depth}"


@pytest.mark.slow
def test_mexa_on_ntrex_equals_the_released_mexa_pipeline(gemma):
    model, tokenizer = gemma
    corpus = read_ntrex(ntrex_path()).subset(["eng", "deu", "zho-CN"], 40)
    sites = [Site(layer, "hidden") for layer in range(n_layers(model) + 1)]
    table = measure(
        capture_corpus(model, tokenizer, corpus, sites, pooling="weighted"), metrics=["mexa"], component="hidden"
    ).set_index(["language", "layer"])["value"]
    for lang, per_layer in reference_mexa(model, tokenizer, corpus).items():
        ours = [table[lang, layer] for layer in range(len(per_layer))]
        assert ours == pytest.approx(per_layer, abs=1 / 40 + 1e-9), lang  # a float-noise flip moves one sentence
        assert sum(abs(a - b) for a, b in zip(ours, per_layer)) <= 2 / 40, lang


@pytest.mark.slow
def test_the_model_translates_three_shot_into_english(gemma):
    """The downstream measure means something here: Gemma's 3-shot German->English translations of held-out NTREX
    sentences score far above copying the source; the source mask is the source sentence in Gemma's tokenizer."""
    model, tokenizer = gemma
    corpus = read_ntrex(ntrex_path()).subset(["eng", "deu"], 11)
    task = translation_task(corpus, "deu", "eng", 8)
    for mask, prompt, (start, end) in zip(source_tokens(tokenizer, task, Tokenization()), task.prompts, task.spans):
        ids = tokenizer(prompt)["input_ids"]
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]).strip() == prompt[start:end]
    translated = translate(model, tokenizer, task)
    copied = chrf([prompt[start:end] for prompt, (start, end) in zip(task.prompts, task.spans)], task.references)
    print({"chrF": chrf(translated, task.references), "copy": copied})
    assert chrf(translated, task.references) >= max(30.0, copied + 10)
