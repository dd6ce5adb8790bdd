"""Streaming neuron statistics equal the same statistics of the full in-memory activations; pads never count."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import tiny
from probes.capture import NeuronStats, StatsError, Tokenization, capture, collect_stats, watch
from probes.data import demo_corpus
from probes.model import Site

LANGS = ("eng", "rus", "jpn")
SITES = [Site(1, "mlp_gate"), Site(2, "resid"), Site(3, "mlp_act")]
QUANTILES = (0.1, 0.5, 0.9)


def corpus(n: int = 8):
    return demo_corpus().subset(LANGS, n)


@functools.lru_cache(maxsize=None)
def reference() -> dict[tuple[Site, str], torch.Tensor]:
    """Per-token activations of every text, concatenated per language: the full in-memory tensor.

    One right-padded batch per language through ``watch``; each text's rows are cut to its own token count
    (from the tokenizer, not from any mask), so padding cannot reach the reference, and the BOS is dropped
    (statistics count the text, as LAPE's released code does).
    """
    model, tokenizer = tiny("llama")
    out: dict[tuple[Site, str], list[torch.Tensor]] = {}
    for language in LANGS:
        ids = [tokenizer(text)["input_ids"] for text in corpus().texts(language)]
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        seen = {}
        with torch.no_grad(), watch(model, SITES, lambda site, t, _ctx: seen.__setitem__(site, t.clone())):
            model.base_model(input_ids=input_ids, attention_mask=mask)
        for site in SITES:
            out[site, language] = [
                seen[site][row, : len(tokens)][torch.tensor(tokens) != tokenizer.bos_token_id].double()
                for row, tokens in enumerate(ids)
            ]
    return {key: torch.cat(parts) for key, parts in out.items()}


@functools.lru_cache(maxsize=None)
def streamed(batch_size: int, padding_side: str, n: int = 8) -> NeuronStats:
    model, tokenizer = tiny("llama")
    config = Tokenization(batch_size=batch_size, padding_side=padding_side)
    return collect_stats(model, tokenizer, corpus(n), SITES, bins=64, tokenization=config)


def assert_quantiles_close(estimate: torch.Tensor, data: torch.Tensor, q: float, width: torch.Tensor, where: str):
    """The estimate lies within one bin of the exact order statistics around q * (n - 1)."""
    lower = torch.quantile(data, q, dim=0, interpolation="lower")
    higher = torch.quantile(data, q, dim=0, interpolation="higher")
    slack = 1e-9 + width
    bad = (estimate < lower - slack) | (estimate > higher + slack)
    assert not bad.any(), f"{where} q={q}: {int(bad.sum())} neurons off by more than a bin"


def test_token_statistics_equal_in_memory_reference_with_left_padding():
    stats = streamed(4, "left")
    exact = reference()
    for (site, language), data in exact.items():
        where = f"{site} {language}"
        assert stats.count(site, language) == data.shape[0], f"{where}: pads were counted (or tokens lost)"
        # activations of padded batches differ from unpadded runs by float noise, which can flip a sign near 0
        flips = (stats.count_positive(site, language) - (data > 0).sum(0)).abs()
        assert flips.max() <= 1 and flips.sum() <= 3, f"{where}: positive counts differ by {flips.sum()}"
        exact_p = (data > 0).double().mean(0)
        torch.testing.assert_close(stats.probability(site, language), exact_p, atol=2 / len(data), rtol=0)
        torch.testing.assert_close(stats.mean(site, language), data.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.std(site, language), data.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.std(site, language, ddof=1), data.std(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.min(site, language), data.amin(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.max(site, language), data.amax(0), atol=1e-5, rtol=1e-5)
        width = stats.bin_width(site, language)
        extent = data.amax(0) - data.amin(0)
        assert (width <= 4 * extent / stats.bins + 1e-6).all(), f"{where}: bins wider than the bound"
        for q in QUANTILES:
            assert_quantiles_close(stats.quantile(site, language, q), data, q, width + 1e-5, where)


def test_batched_equals_one_by_one():
    batched, single = streamed(8, "left", 4), streamed(1, "right", 4)
    for site in SITES:
        for language in LANGS:
            assert batched.count(site, language) == single.count(site, language)
            flips = (batched.count_positive(site, language) - single.count_positive(site, language)).abs()
            assert flips.sum() <= 3, f"{site} {language}: positive counts differ by {flips.sum()}"
            for stat in (NeuronStats.mean, NeuronStats.std, NeuronStats.min, NeuronStats.max):
                expected = stat(single, site, language)
                torch.testing.assert_close(stat(batched, site, language), expected, atol=1e-5, rtol=1e-5)


def test_sentence_statistics_equal_pooled_vectors():
    model, tokenizer = tiny("llama")
    stats = collect_stats(model, tokenizer, corpus(), SITES[:1], per="sentence", pooling="max", bins=16)
    assert stats.per == "sentence"
    for language in LANGS:
        pooled = capture(model, tokenizer, corpus().texts(language), SITES[:1], pooling="max")[SITES[0]]
        pooled = pooled.double()
        assert stats.count(SITES[0], language) == len(pooled) == 8
        torch.testing.assert_close(stats.probability(SITES[0], language), (pooled > 0).double().mean(0))
        torch.testing.assert_close(stats.mean(SITES[0], language), pooled.mean(0))
        torch.testing.assert_close(stats.std(SITES[0], language), pooled.std(0, unbiased=False))
        median = stats.quantile(SITES[0], language, 0.5)
        assert_quantiles_close(median, pooled, 0.5, stats.bin_width(SITES[0], language), language)


def test_histogram_grows_its_range_without_losing_values():
    generator = torch.Generator().manual_seed(0)
    stats = NeuronStats(bins=32)
    site = Site(1, "mlp_act")
    first = torch.rand(5, 3, generator=generator) * 0.01  # a narrow first batch sets a tiny range
    later = [torch.randn(50, 3, generator=generator) * scale + shift for scale, shift in ((1, 0), (10, 5), (0.1, -30))]
    constant = torch.zeros(7, 3)  # ties, and values equal to the range's edge
    for batch in (first, *later, constant):
        stats.add(site, "xx", batch)
    data = torch.cat([first, *later, constant]).double()
    state = stats.state_dict()
    assert (state[f"{site}/xx/hist"].sum(1) == len(data)).all(), "values fell outside the histogram"
    width = stats.bin_width(site, "xx")
    assert (width <= 4 * (data.amax(0) - data.amin(0)) / 32 + 1e-12).all()
    for q in (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0):
        assert_quantiles_close(stats.quantile(site, "xx", q), data, q, width, "synthetic")
    torch.testing.assert_close(stats.quantile(site, "xx", 0.0), data.amin(0))
    torch.testing.assert_close(stats.quantile(site, "xx", 1.0), data.amax(0))


def test_memory_does_not_grow_with_sentences():
    model, tokenizer = tiny("llama")
    sizes = []
    for n in (10, 40):
        stats = collect_stats(model, tokenizer, demo_corpus().subset(["eng"], n), SITES[:2], bins=32)
        sizes.append(sum(t.numel() for t in stats.state_dict().values()))
        assert stats.count(SITES[0], "eng") > 4 * n  # it really saw the tokens
    assert sizes[0] == sizes[1]
    assert sizes[0] < 2 * (64 + 128) * (32 + 10)  # sites x neurons x (bins + a few accumulators)


def test_errors_say_what_is_missing():
    stats = NeuronStats(bins=0)
    stats.add(Site(1, "mlp_gate"), "eng", torch.randn(4, 8))
    with pytest.raises(StatsError, match="rus"):
        stats.mean(Site(1, "mlp_gate"), "rus")
    with pytest.raises(StatsError, match="bins=0"):
        stats.quantile(Site(1, "mlp_gate"), "eng", 0.5)
    with pytest.raises(StatsError, match="8"):
        stats.add(Site(1, "mlp_gate"), "eng", torch.randn(4, 9))
    with pytest.raises(StatsError, match="non-finite"):
        stats.add(Site(1, "mlp_gate"), "eng", torch.full((2, 8), float("nan")))
