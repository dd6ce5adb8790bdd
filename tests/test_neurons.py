"""Neuron finders: LAPE and AP experts find neurons planted in a tiny model, match reference computations,
and their NeuronSets round-trip through safe artifacts that refuse the wrong model."""

from __future__ import annotations

import copy
import functools
import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from conftest import activations, tiny
from probes.artifacts import ArtifactError, NeuronError, NeuronSet
from probes.capture import Tokenization, capture_corpus, collect_stats
from probes.data import demo_corpus
from probes.find import LAPE, APExperts, average_precision
from probes.model import Site, blocks, model_identity, random_model

LANGS = ("eng", "rus", "jpn", "arb")  # four scripts
PLANTED = {"eng": [10], "rus": [20, 21], "jpn": [30], "arb": [40]}  # layer-2 neurons, 5 = 1% of 4 x 128
PLANT_LAYER = 2


def corpus():
    return demo_corpus().subset(LANGS, 12)


@functools.lru_cache(maxsize=None)
def planted_model():
    """A copy of the tiny Llama where layer-2 neurons PLANTED[l] fire exactly on the tokens only language l uses.

    Residual coordinates 0..3 carry "token exclusive to LANGS[c]" flags and coordinate 4 a constant: the
    embeddings set them, and every other module's weights neither read nor write them, so they reach layer
    2's MLP unchanged. A planted neuron's gate reads +50 * flag - 50 * constant (> 0 only on flagged tokens),
    its up projection reads the constant (> 0), and its output is not written back (later layers are not
    disturbed). All other gates read -0.2 * constant: a negative bias that makes neurons fire on a minority
    of tokens, as in trained LLMs.
    """
    model, tokenizer = tiny("llama")
    model = copy.deepcopy(model)  # the shared fixture stays untouched
    token_sets = {lang: {i for text in corpus().texts(lang) for i in tokenizer(text)["input_ids"]} for lang in LANGS}
    constant = len(LANGS)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[:, : constant + 1] = 0
        embedding[:, constant] = 0.02
        for column, lang in enumerate(LANGS):
            exclusive = token_sets[lang] - set().union(*(token_sets[other] for other in LANGS if other != lang))
            embedding[sorted(exclusive), column] = 0.05
        for block in blocks(model):
            attention, mlp = block.self_attn, block.mlp
            for reader in (attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj):
                reader.weight[:, : constant + 1] = 0
            for writer in (attention.o_proj, mlp.down_proj):
                writer.weight[: constant + 1] = 0
            mlp.gate_proj.weight[:, constant] = -0.2
        mlp = blocks(model)[PLANT_LAYER - 1].mlp
        for column, lang in enumerate(LANGS):
            for neuron in PLANTED[lang]:
                mlp.gate_proj.weight[neuron] = 0
                mlp.gate_proj.weight[neuron, column] = 50.0
                mlp.gate_proj.weight[neuron, constant] = -50.0
                mlp.up_proj.weight[neuron] = 0
                mlp.up_proj.weight[neuron, constant] = 1.0
                mlp.down_proj.weight[:, neuron] = 0
    return model, tokenizer


@functools.lru_cache(maxsize=None)
def fitted_lape() -> LAPE:
    model, tokenizer = planted_model()
    sites = [Site(layer, "mlp_gate") for layer in range(1, 5)]
    stats = collect_stats(model, tokenizer, corpus(), sites, bins=0, tokenization=Tokenization(batch_size=8))
    return LAPE().fit(stats)


def test_planting_worked():
    p = fitted_lape().probabilities_[PLANT_LAYER - 1]  # (neurons, languages), from streaming counts
    for column, lang in enumerate(LANGS):
        for neuron in PLANTED[lang]:
            others = [c for c in range(len(LANGS)) if c != column]
            assert p[neuron, column] > 0.7, f"planted {lang} neuron {neuron} fires on {p[neuron, column]:.2f}"
            assert (p[neuron, others] == 0).all(), f"planted {lang} neuron {neuron} fires for other languages"
    assert fitted_lape().bar_ < 0.7  # the planted neurons clear LAPE's 95th-percentile filter


def test_lape_finds_planted_neurons():
    lape = fitted_lape()
    found = lape.neurons_
    assert found.method == "LAPE" and found.component == "mlp_gate" and found.languages == LANGS
    assert found.model == model_identity(planted_model()[0])
    for lang in LANGS:
        units = {tuple(row) for row in found.neurons[lang].tolist()}
        for other in LANGS:
            planted = {(PLANT_LAYER, n) for n in PLANTED[other]}
            assert (planted <= units) == (other == lang), f"{other}'s planted neurons vs {lang}'s units {units}"
    assert int(lape.selected_.sum()) == round(0.01 * 4 * 128) == 5
    assert {layer: idx.tolist() for layer, idx in found.units("rus").items()} == {PLANT_LAYER: PLANTED["rus"]}
    table = found.count_per_layer()
    assert list(table.columns) == ["layer", "language", "n_neurons"] and len(table) == 4 * len(LANGS)
    assert table.query("layer == 2 and language == 'rus'").n_neurons.item() == 2


def test_ap_experts_find_planted_units():
    model, tokenizer = planted_model()
    sites = [Site(layer, "mlp_act") for layer in range(1, 5)]
    acts = capture_corpus(model, tokenizer, corpus(), sites, tokenization=Tokenization(batch_size=8))
    experts = APExperts(k=3).fit(acts)
    found = experts.neurons_
    assert found.component == "mlp_act" and found.languages == LANGS and found.params["pooling"] == "mean"
    for lang in LANGS:
        top = [tuple(row) for row in found.neurons[lang].tolist()]
        planted = [(PLANT_LAYER, n) for n in PLANTED[lang]]
        assert top[: len(planted)] == planted, f"{lang}: top units {top}"
        assert (found.values[lang]["ap"][: len(planted)] == 1).all()
        assert (found.values[lang]["ap"][len(planted) :] < 1).all()  # only planted units separate perfectly
        on, off = found.values[lang]["on_p50"][: len(planted)], found.values[lang]["off_mean"][: len(planted)]
        assert (on > 0).all() and (off <= 0).all()


# ---- reference computations -------------------------------------------------------------------------------


def lape_brute_force(p: np.ndarray, top_fraction: float, filter_quantile: float) -> dict[int, set]:
    """Tang et al.'s selection written out with loops and sorted lists."""
    layers, neurons, languages = p.shape
    ordered = sorted(p.flatten().tolist())
    bar = ordered[round(len(ordered) * filter_quantile) - 1]
    candidates = []
    for layer in range(layers):
        for neuron in range(neurons):
            row = p[layer, neuron]
            if not any(value > bar for value in row):
                continue
            total = sum(row)
            entropy = -sum(v / total * math.log(v / total) for v in row if v > 0)
            candidates.append((entropy, layer, neuron))
    chosen = sorted(candidates)[: round(top_fraction * layers * neurons)]
    return {
        lang: {(layer + 1, neuron) for _, layer, neuron in chosen if p[layer, neuron, lang] > bar}
        for lang in range(languages)
    }


@pytest.mark.parametrize("top_fraction", [0.01, 0.1, 0.5])
def test_lape_matches_brute_force(top_fraction):
    generator = np.random.default_rng(0)
    p = generator.uniform(0, 0.6, size=(3, 40, 4))
    p[0, 5] = [0.95, 0.01, 0.02, 0.0]  # one language
    p[1, 7] = [0.0, 0.97, 0.96, 0.0]  # two languages: assigned to both
    p[2, 9] = [0.0, 0.0, 0.0, 0.0]  # never active
    p[2, 11] = [0.9, 0.9, 0.9, 0.9]  # active everywhere: passes the filter, highest entropy
    names = ["a", "b", "c", "d"]
    lape = LAPE(top_fraction=top_fraction).fit(p, languages=names)
    expected = lape_brute_force(p, top_fraction, 0.95)
    for column, name in enumerate(names):
        got = {tuple(row) for row in lape.neurons_.neurons[name].tolist()}
        assert got == expected[column], f"top_fraction={top_fraction}, language {name}"
    found = {name: {tuple(r) for r in lape.neurons_.neurons[name].tolist()} for name in names}
    both = found["b"] & found["c"]
    bar = sorted(p.flatten())[round(p.size * 0.95) - 1]
    passing = int((p > bar).any(axis=2).sum())
    assert int(lape.selected_.sum()) == min(round(top_fraction * 120), passing)
    assert ((2, 7) in both) == (top_fraction > 0.01)  # 1% of 120 neurons = 1: only (1, 5), the lowest entropy
    assert lape.neurons_.neurons["a"][0].tolist() == [1, 5]
    assert lape.bar_ == bar
    entropy = lape.entropy_.numpy()
    normed = p[0, 5] / p[0, 5].sum()
    assert entropy[0, 5] == pytest.approx(-(normed[normed > 0] * np.log(normed[normed > 0])).sum())
    assert entropy[2, 9] == 0 and entropy[2, 11] == pytest.approx(math.log(4))


def test_lape_selects_among_filtered_neurons_only():
    p = np.full((1, 100, 2), 0.1)
    p[0, :3] = [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]]  # the only neurons above the bar
    p[0, 50] = [0.1, 0.0]  # entropy 0 but below the bar: dismissed
    lape = LAPE(top_fraction=0.5).fit(p, languages=["x", "y"])  # budget 50, only 3 pass
    assert lape.neurons_.neurons["x"].tolist() == [[1, 0], [1, 1]]
    assert lape.neurons_.neurons["y"].tolist() == [[1, 2]]


def test_average_precision_equals_sklearn_with_ties():
    generator = np.random.default_rng(1)
    responses = np.round(generator.normal(size=(60, 30)), 1)  # rounding makes ties
    responses[:, 0] = 1.0  # one unit constant
    labels = generator.integers(0, 3, size=60) == 0
    ours = average_precision(torch.from_numpy(responses), torch.from_numpy(labels)).numpy()
    reference = [average_precision_score(labels, responses[:, unit]) for unit in range(30)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)


def test_ap_experts_top_k_and_unit_values_equal_numpy():
    generator = np.random.default_rng(2)
    languages = ["eng", "deu", "fra"]
    labels = np.repeat(languages, 20)
    responses = {
        Site(1, "mlp_act"): generator.normal(size=(60, 12)),
        Site(3, "mlp_act"): generator.normal(size=(60, 8)),
    }
    responses[Site(3, "mlp_act")][:, 2] += 3 * (labels == "deu")  # a clear deu expert
    by_layer = {
        site.layer: {lang: torch.from_numpy(r[20 * i : 20 * (i + 1)]) for i, lang in enumerate(languages)}
        for site, r in responses.items()
    }
    experts = APExperts(k=4, bottom_k=2).fit(activations(by_layer, "mlp_act"))
    assert experts.languages_ == ["eng", "deu", "fra"]
    columns = [(1, n) for n in range(12)] + [(3, n) for n in range(8)]
    stacked = np.concatenate([responses[Site(1, "mlp_act")], responses[Site(3, "mlp_act")]], axis=1)
    for lang in experts.languages_:
        positive = labels == lang
        ap = np.array([average_precision_score(positive, stacked[:, u]) for u in range(stacked.shape[1])])
        order = np.argsort(-ap, kind="stable")
        expected = [columns[u] for u in order[:4]] + [columns[u] for u in np.argsort(ap, kind="stable")[:2]]
        got = [tuple(row) for row in experts.neurons_.neurons[lang].tolist()]
        assert got == expected, lang
        chosen = [columns.index(unit) for unit in got]
        values = experts.neurons_.values[lang]
        np.testing.assert_allclose(values["ap"], ap[chosen], rtol=1e-12)
        np.testing.assert_allclose(values["on_p50"], np.median(stacked[positive][:, chosen], axis=0), rtol=1e-12)
        on = stacked[positive][:, chosen]
        np.testing.assert_allclose(values["on_p90"], np.percentile(on, 90, axis=0), rtol=1e-12)
        np.testing.assert_allclose(values["off_mean"], stacked[~positive][:, chosen].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(experts.ap_[Site(3, "mlp_act")][experts.languages_.index(lang)], ap[12:], rtol=1e-12)
    assert experts.neurons_.neurons["deu"][0].tolist() == [3, 2]


def test_ap_experts_over_every_linear_projection_equal_kojimas_pipeline():
    """selfcond/expertise.py (sklearn AP per unit of every response, on_p50 over positives) then
    make_limited_expert.py (sort by ap, top N and bottom N of the whole table), on the units of several
    components and layers together."""
    import pandas as pd

    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "fra"], 12)
    components = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    sites = [Site(layer, c) for c in components for layer in (1, 2)]
    acts = capture_corpus(model, tokenizer, corpus, sites)
    experts = APExperts(k=20, bottom_k=20).fit(acts, components)
    with pytest.raises(NeuronError, match="use neuron_sets_"):
        experts.neurons_
    labels = np.repeat(corpus.languages, len(corpus))
    for lang in corpus.languages:
        rows = []
        for c in components:
            for layer in (1, 2):
                responses = np.concatenate(
                    [acts.get(Site(layer, c), other).double().numpy() for other in corpus.languages]
                )
                positive = labels == lang
                for unit in range(responses.shape[1]):
                    rows.append(
                        (
                            c,
                            layer,
                            unit,
                            average_precision_score(positive, responses[:, unit]),
                            np.percentile(responses[positive, unit], q=50),
                        )
                    )
        df = pd.DataFrame(rows, columns=["component", "layer", "unit", "ap", "on_p50"])
        top, bottom = df.sort_values("ap", ascending=False).head(20), df.sort_values("ap", ascending=True).head(20)
        both = pd.concat([top, bottom])
        expected = {(r.component, r.layer, r.unit): (r.ap, r.on_p50) for r in both.itertuples()}
        got = {}
        for c, found in experts.neuron_sets_.items():
            assert found.component == c and found.params["ranked_with"] == components
            values = found.values[lang]
            for (layer, unit), ap, on in zip(found.neurons[lang].tolist(), values["ap"], values["on_p50"]):
                got[c, layer, unit] = (float(ap), float(on))
        assert got.keys() == expected.keys(), lang
        for key, (ap, on) in expected.items():
            assert got[key] == pytest.approx((ap, on), rel=1e-9), key


# ---- NeuronSet ---------------------------------------------------------------------------------------------


def small_set(model, rows=((1, 3), (2, 127)), component="mlp_act") -> NeuronSet:
    units = {"eng": torch.tensor(rows), "rus": torch.tensor([[4, 0]])}
    n = len(rows)
    values = {"eng": {"on_p50": torch.linspace(0.5, -1.0, n), "ap": torch.linspace(0.9, 0.8, n)}}  # rus: none
    return NeuronSet(component, units, values, model_identity(model), "test", {"k": 2})


def test_neuron_set_round_trip(tmp_path):
    model, _ = tiny("llama")
    original = small_set(model)
    path = original.save(tmp_path / "set.safetensors")
    assert NeuronSet.load(path) == original
    assert NeuronSet.load(path, model=model) == original
    assert original != small_set(model, rows=((1, 3), (2, 126)))
    by_layer = original.units("eng")
    assert {layer: idx.tolist() for layer, idx in by_layer.items()} == {1: [3], 2: [127]}
    assert all(idx.dtype == torch.long for idx in by_layer.values())
    lape = fitted_lape().neurons_
    lape.save(tmp_path / "lape.safetensors")
    assert NeuronSet.load(tmp_path / "lape.safetensors", model=planted_model()[0]) == lape


def test_neuron_set_never_overwrites_silently(tmp_path):
    model, _ = tiny("llama")
    path = small_set(model).save(tmp_path / "set.safetensors")
    before = path.read_bytes()
    with pytest.raises(ArtifactError, match="exists"):
        small_set(model, rows=((1, 1),)).save(path)
    assert path.read_bytes() == before
    small_set(model, rows=((1, 1),)).save(path, overwrite=True)
    assert NeuronSet.load(path).neurons["eng"].tolist() == [[1, 1]]


def test_load_refuses_another_model(tmp_path):
    model, _ = tiny("llama")
    path = small_set(model).save(tmp_path / "set.safetensors")
    other, _ = random_model("llama", num_hidden_layers=2)
    with pytest.raises(ArtifactError, match="n_layers: recorded 4, model has 2"):
        NeuronSet.load(path, model=other)
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.model.layers[2].mlp.down_proj.weight.mul_(1.001)  # a fine-tune: same config, other weights
    with pytest.raises(ArtifactError, match="same config, different weights"):
        NeuronSet.load(path, model=tuned)
    half = copy.deepcopy(model).to(torch.bfloat16)  # the same weights in another dtype fit
    assert NeuronSet.load(path, model=half) == small_set(model)


def test_load_refuses_units_outside_the_model(tmp_path):
    model, _ = tiny("llama")
    wide = small_set(model, rows=((1, 3), (2, 128))).save(tmp_path / "wide.safetensors")
    with pytest.raises(ArtifactError, match=r"layer 2, neuron 128.*128 neurons per layer"):
        NeuronSet.load(wide, model=model)
    deep = small_set(model, rows=((5, 3),)).save(tmp_path / "deep.safetensors")
    with pytest.raises(ArtifactError, match=r"layer 5, neuron 3.*4 layers"):
        NeuronSet.load(deep, model=model)
    assert NeuronSet.load(deep).neurons["eng"].tolist() == [[5, 3]]  # without a model: structure only


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for source in [path for package in ("probes", "steer", "xlalign") for path in (root / package).rglob("*.py")]:
        text = source.read_text(encoding="utf-8")
        assert "pickle.load" not in text and "torch.load(" not in text and "import pickle" not in text, source
    model, _ = tiny("llama")
    path = small_set(model).save(tmp_path / "set.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert NeuronSet.load(path) == small_set(model)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8 : 8 + header].startswith(b"{")  # a safetensors JSON header


def test_bad_input_is_refused():
    with pytest.raises(NeuronError, match="component"):
        NeuronSet("mlp", {"eng": torch.tensor([[1, 2]])})
    with pytest.raises(NeuronError, match="layer >= 1"):
        NeuronSet("mlp_act", {"eng": torch.tensor([[0, 2]])})
    with pytest.raises(NeuronError, match="2 entries for 1 units"):
        NeuronSet("mlp_act", {"eng": torch.tensor([[1, 2]])}, {"eng": {"ap": torch.tensor([0.1, 0.2])}})
    with pytest.raises(NeuronError, match="languages"):
        LAPE().fit(np.zeros((2, 3, 2)))
    with pytest.raises(NeuronError, match="2 languages"):
        APExperts(k=1).fit(activations({1: {"eng": torch.zeros(3, 2)}}, "mlp_act"))
    with pytest.raises(NeuronError, match="pooled with 'max'"):
        APExperts(k=1).fit(
            activations({1: {"eng": torch.zeros(3, 2), "deu": torch.ones(3, 2)}}, "mlp_act", pooling="max")
        )
