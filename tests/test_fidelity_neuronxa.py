"""NeuronXA as its paper defines it (Huang et al. 2025): per sentence, the FFN neurons' states (NAS: act > 0;
NAV: |act|) averaged over the tokens with MEXA's position weights t / sum(1..T); per layer, the share of
translation pairs whose cosine is strictly above every other entry of its row and column (NASCA, NAVCA)."""

from __future__ import annotations

import pytest
import torch

from conftest import activations, tiny
from probes.analysis import NEURON_POOLINGS, measure, neuron_overlap_retrieval, neuronxa
from probes.capture import capture, pool, record
from probes.data import demo_corpus
from probes.model import Site

LANGUAGES = ["eng", "deu", "hin"]


def paper_score(pivot_tokens: list[torch.Tensor], other_tokens: list[torch.Tensor], state) -> float:
    """The paper's formulas, written out: N = sum_t w_t state(n_t), w_t = t / sum_k k; C = cosine matrix;
    score = (1/n) sum_i 1(c_ii > c_ij and c_ii > c_ji for all j != i)."""

    def sentence(tokens: torch.Tensor) -> torch.Tensor:
        t = torch.arange(1, len(tokens) + 1, dtype=torch.float64)
        return (t / t.sum()) @ state(tokens.double())

    a = torch.stack([sentence(x) for x in pivot_tokens])
    b = torch.stack([sentence(x) for x in other_tokens])
    c = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    n = len(c)
    hits = 0
    for i in range(n):
        others = [c[i, j].item() for j in range(n) if j != i] + [c[j, i].item() for j in range(n) if j != i]
        hits += all(c[i, i].item() > value for value in others)
    return hits / n


STATES = {"nas": lambda x: (x > 0).double(), "nav": lambda x: x.abs()}


@pytest.mark.parametrize("pooling, metric", [("nas", "nasca"), ("nav", "navca")])
def test_measured_neuronxa_equals_the_papers_formula(pooling, metric):
    """A tiny model's mlp_gate, captured with the NeuronXA pooling and measured, equals the formula computed by
    hand from the same forward passes' per-token activations, at every layer."""
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(LANGUAGES, 24)
    sites = [Site(layer, "mlp_gate") for layer in (1, 2, 3)]
    pooled, tokens = {}, {}
    for lang in LANGUAGES:
        with record(model, sites) as seen:
            pooled[lang] = capture(model, tokenizer, corpus.texts(lang), sites, pooling=pooling)
        tokens[lang] = {site: seen.tokens(site) for site in sites}
    by_layer = {site.layer: {lang: pooled[lang][site] for lang in LANGUAGES} for site in sites}
    acts = activations(by_layer, component="mlp_gate", pooling=pooling)
    assert NEURON_POOLINGS[pooling] == (metric,)
    table = measure(acts, metrics="all", component="mlp_gate")
    assert set(table.metric) == {metric}
    for site in sites:
        for lang in LANGUAGES[1:]:
            expected = paper_score(tokens["eng"][site], tokens[lang][site], STATES[pooling])
            row = table[(table.layer == site.layer) & (table.language == lang)]
            assert row.value.item() == pytest.approx(expected), (site, lang)


def test_position_weights_and_states_of_the_poolings():
    x = torch.tensor([[[1.0, -2.0], [-3.0, 4.0], [5.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    weights = torch.tensor([1.0, 2.0, 3.0]) / 6
    assert torch.allclose(pool(x, mask, "nas")[0], weights @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(pool(x, mask, "nav")[0], weights @ torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]))
    assert torch.allclose(pool(x, mask, "active")[0], torch.tensor([2 / 3, 1 / 3]))


def test_neuronxa_is_not_the_majority_active_jaccard():
    """Sentences with the same majority-active neurons but different state profiles: the Jaccard reading cannot
    tell the translations apart, NeuronXA's cosine of the weighted states can."""
    pivot = torch.tensor([[0.9, 0.6, 0.1, 0.0], [0.6, 0.9, 0.0, 0.1], [0.1, 0.0, 0.9, 0.6]])
    other = torch.tensor([[0.95, 0.55, 0.1, 0.0], [0.55, 0.95, 0.0, 0.1], [0.1, 0.0, 0.95, 0.55]])
    assert neuronxa(pivot, other) == 1.0
    assert neuron_overlap_retrieval(pivot, other) == pytest.approx(1 / 3)


@pytest.mark.parametrize("pooling", ["nas", "nav"])
def test_neuronxa_on_noisy_translations_equals_the_papers_formula(pooling):
    """Sentences of 3-9 tokens whose translations share a noisy neuron profile: a score strictly between 0 and 1,
    equal to the formula, through the batched, padded pooling."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 10, (30,), generator=generator).tolist()
    profiles = [torch.randn(16, generator=generator) for _ in lengths]
    pivot = [p + 2.5 * torch.randn(n, 16, generator=generator) for p, n in zip(profiles, lengths)]
    other = [p + 2.5 * torch.randn(m, 16, generator=generator) for p, m in zip(profiles, reversed(lengths))]

    def pooled(tokens):
        width = max(len(x) for x in tokens)
        padded = torch.stack([torch.cat([x, torch.full((width - len(x), 16), float("nan"))]) for x in tokens])
        mask = torch.arange(width)[None, :] < torch.tensor([len(x) for x in tokens])[:, None]
        return pool(padded, mask, pooling)

    expected = paper_score(pivot, other, STATES[pooling])
    assert 0 < expected < 1
    assert neuronxa(pooled(pivot), pooled(other)) == pytest.approx(expected)
