"""Alignment metrics against brute-force references and known answers."""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, jaccard_score

import probes.analysis.alignment
from conftest import tiny
from probes.analysis import (
    ALL_METRICS,
    PAIR_METRICS,
    MetricError,
    bootstrap_ci,
    cosine_matrix,
    linear_cka,
    matched_random_gap,
    measure,
    mexa,
    neuron_overlap,
    neuron_overlap_retrieval,
    neuronxa,
    retrieval_top1,
    retrieval_top1_reverse,
    retrieval_topk,
    strong_alignment_ap,
    strong_alignment_map,
    strong_alignment_map_by_language,
)
from probes.capture import Tokenization, capture_corpus, capture_to_store
from probes.data import demo_corpus
from probes.find import LanguageIDProbe
from probes.model import Site, n_layers
from reference_mexa import reference_mexa


def brute_cosine(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def brute_mexa(pivot, other):
    n = len(pivot)
    sims = [[brute_cosine(pivot[i].tolist(), other[j].tolist()) for j in range(n)] for i in range(n)]
    hits = 0
    for i in range(n):
        row = all(sims[i][i] > sims[i][j] for j in range(n) if j != i)
        column = all(sims[i][i] > sims[j][i] for j in range(n) if j != i)
        hits += row and column
    return hits / n


def test_cosine_matrix_matches_brute_force():
    a, b = torch.randn(5, 7), torch.randn(4, 7)
    sims = cosine_matrix(a, b)
    for i, j in itertools.product(range(5), range(4)):
        assert sims[i, j].item() == pytest.approx(brute_cosine(a[i].tolist(), b[j].tolist()), abs=1e-6)


def test_identical_matrices_are_perfectly_aligned():
    x = torch.randn(50, 16)
    assert mexa(x, x) == 1.0
    assert retrieval_top1(x, x) == 1.0 == retrieval_top1_reverse(x, x)


def test_random_permutation_is_near_chance():
    x = torch.randn(200, 32)
    shuffled = x[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    assert mexa(x, shuffled) <= 0.02
    assert retrieval_top1(x, shuffled) <= 0.02


def test_mexa_and_retrieval_match_brute_force_on_noisy_pairs():
    generator = torch.Generator().manual_seed(1)
    pivot = torch.randn(30, 8, generator=generator)
    other = pivot + 1.2 * torch.randn(30, 8, generator=generator)
    expected = brute_mexa(pivot, other)
    assert 0.1 < expected < 0.9  # a case where the strict rule matters
    assert mexa(pivot, other) == pytest.approx(expected)
    forward = (
        sum(
            int(torch.tensor([brute_cosine(o.tolist(), p.tolist()) for p in pivot]).argmax() == i)
            for i, o in enumerate(other)
        )
        / 30
    )
    assert retrieval_top1(pivot, other) == pytest.approx(forward)


def test_mexa_is_strict_about_rows_and_columns():
    # Sentence 0's translation wins its row but loses its column: MEXA must not count it.
    pivot = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    other = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    sims = cosine_matrix(pivot, other)
    assert sims[0, 0] > sims[0, 1] and sims[1, 0] > sims[0, 0]
    assert mexa(pivot, other) == pytest.approx(brute_mexa(pivot, other)) == 0.5


def noisy_pairs(n, d, noise, seed):
    generator = torch.Generator().manual_seed(seed)
    pivot = torch.randn(n, d, generator=generator)
    return pivot, pivot + noise * torch.randn(n, d, generator=generator)


def brute_retrieval(pivot, other, k, margin=False, margin_k=4):
    n = len(pivot)
    sims = [[brute_cosine(other[i].tolist(), pivot[j].tolist()) for j in range(n)] for i in range(n)]
    if margin:
        query_nn = [sum(sorted(sims[i], reverse=True)[:margin_k]) / margin_k for i in range(n)]
        candidate_nn = [
            sum(sorted((sims[i][j] for i in range(n)), reverse=True)[:margin_k]) / margin_k for j in range(n)
        ]
        sims = [[sims[i][j] / (query_nn[i] / 2 + candidate_nn[j] / 2) for j in range(n)] for i in range(n)]
    ranked = [sorted(range(n), key=lambda j: -sims[i][j]) for i in range(n)]
    return sum(ranked[i].index(i) < k for i in range(n)) / n


@pytest.mark.parametrize("margin", [False, True])
def test_retrieval_topk_matches_brute_force(margin):
    pivot, other = noisy_pairs(25, 8, 1.5, seed=2)
    values = [retrieval_topk(pivot, other, k, margin=margin) for k in (1, 3, 10)]
    assert 0 < values[0] < values[1] < values[2] < 1
    for k, value in zip((1, 3, 10), values):
        assert value == pytest.approx(brute_retrieval(pivot, other, k, margin))
    assert retrieval_topk(pivot, other, 25, margin=margin) == 1.0
    assert retrieval_topk(other, pivot, 3, margin=margin) == pytest.approx(brute_retrieval(other, pivot, 3, margin))
    assert retrieval_top1(pivot, other) == pytest.approx(brute_retrieval(pivot, other, 1, False))
    assert retrieval_top1_reverse(pivot, other) == pytest.approx(brute_retrieval(other, pivot, 1))


def test_ties_count_against_the_translation():
    # Sentences 0 and 1 have identical vectors in both languages: neither can be told from the other.
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    x[1] = x[0]
    assert retrieval_top1(x, x) == 0.6 == mexa(x, x)
    assert retrieval_topk(x, x, k=2) == 1.0


def test_margin_retrieval_beats_cosine_when_one_pivot_vector_is_a_hub():
    generator = torch.Generator().manual_seed(0)
    n, d = 40, 32
    shared = torch.zeros(d)
    shared[0] = 1.0
    specific = torch.randn(n, d, generator=generator) / d**0.5
    specific[:, 0] = 0
    other = shared + specific
    pivot = other + 1.2 * torch.randn(n, d, generator=generator) / d**0.5
    pivot[0] = shared  # near every sentence
    to_hub = (cosine_matrix(other, pivot).argmax(dim=1) == 0).double().mean().item()
    plain, with_margin = retrieval_topk(pivot, other), retrieval_topk(pivot, other, margin=True)
    assert to_hub >= 0.2
    assert with_margin >= plain + 0.1
    assert with_margin == pytest.approx(brute_retrieval(pivot, other, 1, margin=True))


def brute_strong_ap(matrices):
    """Per-language mean AP: every query against the rest of the pool, sklearn's AP, plain loops."""
    items = [(language, i, row.tolist()) for language, matrix in matrices.items() for i, row in enumerate(matrix)]
    result = {}
    for language in matrices:
        aps = []
        for q, (query_language, sentence, vector) in enumerate(items):
            if query_language != language:
                continue
            rest = [item for r, item in enumerate(items) if r != q]
            relevant = [int(other_sentence == sentence) for _, other_sentence, _ in rest]
            scores = [brute_cosine(vector, other_vector) for _, _, other_vector in rest]
            aps.append(average_precision_score(relevant, scores))
        result[language] = sum(aps) / len(aps)
    return result


def test_strong_alignment_map_matches_sklearn_loops():
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(8, 6, generator=generator)
    matrices = {language: base + 0.9 * torch.randn(8, 6, generator=generator) for language in ("eng", "deu", "jpn")}
    expected = brute_strong_ap(matrices)
    assert 0.3 < min(expected.values()) < max(expected.values()) < 0.95
    assert strong_alignment_map_by_language(matrices) == pytest.approx(expected)
    assert strong_alignment_map(matrices) == pytest.approx(sum(expected.values()) / 3)
    assert [ap.shape for ap in strong_alignment_ap(matrices).values()] == [(8,)] * 3


def test_strong_alignment_ap_resolves_ties_like_sklearn():
    # 0/1 vectors with exactly equal cosines; sklearn gets the same similarity values.
    rows = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)
    matrices = {"a": rows[[0, 1, 2]], "b": rows[[0, 0, 3]], "c": rows[[1, 2, 2]]}
    pool = torch.cat(list(matrices.values()))
    sims = cosine_matrix(pool, pool)
    sentence = torch.arange(9) % 3
    expected = []
    for q in range(9):
        keep = torch.arange(9) != q
        expected.append(average_precision_score((sentence[keep] == sentence[q]).numpy(), sims[q, keep].numpy()))
    assert any(len(set(sims[q].tolist())) < 9 for q in range(9))  # ties are present
    got = torch.cat(list(strong_alignment_ap(matrices).values()))
    assert got.tolist() == pytest.approx(expected)


def test_strong_alignment_ap_in_blocks_equals_one_block(monkeypatch):
    generator = torch.Generator().manual_seed(15)
    base = torch.randn(30, 8, generator=generator)
    matrices = {language: base + torch.randn(30, 8, generator=generator) for language in ("eng", "deu", "jpn", "kor")}
    whole = strong_alignment_ap(matrices)
    monkeypatch.setattr(probes.analysis.alignment, "_BLOCK", 1000)  # blocks of 1000 // (120 * 3) = 2 queries
    blocks = strong_alignment_ap(matrices)
    assert all(torch.equal(whole[language], blocks[language]) for language in matrices)
    with pytest.raises(ValueError, match="same sentences"):
        strong_alignment_ap({"eng": base, "deu": base[:-1]})
    with pytest.raises(ValueError, match="two or more languages"):
        strong_alignment_ap({"eng": base})


def test_strong_alignment_known_answers():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(100, 32, generator=generator)
    copies = {language: x + 0.01 * torch.randn(100, 32, generator=generator) for language in ("eng", "deu", "jpn")}
    assert strong_alignment_map(copies) == 1.0
    shuffled = {language: x[torch.randperm(100, generator=generator)] for language in ("eng", "deu", "jpn")}
    assert strong_alignment_map(shuffled) < 0.1


def test_strong_alignment_penalises_a_language_offset_that_retrieval_ignores():
    # Same sentences, but each language is pushed along its own extra axis: translations stay each other's
    # nearest cross-language neighbours (weak alignment) yet lose to unrelated same-language sentences.
    x = torch.nn.functional.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(6)), dim=1)
    offsets = torch.eye(3) * 3.0
    matrices = {language: torch.cat([x, offsets[i].expand(50, 3)], dim=1) for i, language in enumerate("abc")}
    assert retrieval_top1(matrices["a"], matrices["b"]) == 1.0 == mexa(matrices["a"], matrices["b"])
    assert strong_alignment_map(matrices) < 0.2
    assert strong_alignment_map({language: x for language in "abc"}) == 1.0


def test_matched_random_gap_matches_brute_force():
    pivot, other = noisy_pairs(12, 5, 1.0, seed=7)
    sims = [[brute_cosine(p.tolist(), o.tolist()) for o in other] for p in pivot]
    matched = sum(sims[i][i] for i in range(12)) / 12
    random = sum(sims[i][j] for i in range(12) for j in range(12) if i != j) / (12 * 11)
    result = matched_random_gap(pivot, other)
    assert result == pytest.approx({"matched": matched, "random": random, "gap": matched - random})
    per_sentence = matched_random_gap(pivot, other, per_sentence=True)
    assert {name: values.mean().item() for name, values in per_sentence.items()} == pytest.approx(result)


def test_a_shared_offset_raises_similarity_but_not_the_gap():
    pivot, other = noisy_pairs(100, 16, 0.5, seed=8)
    offset = 5.0 * torch.ones(16)
    before, after = matched_random_gap(pivot, other), matched_random_gap(pivot + offset, other + offset)
    assert after["matched"] > before["matched"] and after["random"] > before["random"]
    assert after["gap"] < before["gap"]
    shuffled = other[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    assert abs(matched_random_gap(pivot, shuffled)["gap"]) < 0.05


def kornblith_cka(x, y):
    """Reference: numpy, explicit centring matrix (Kornblith et al. 2019, gram_linear + cka)."""
    x, y = x.double().numpy(), y.double().numpy()
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l))


def test_linear_cka_matches_reference_and_invariances():
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(20, 5, generator=generator)
    y = x @ torch.randn(5, 7, generator=generator) + 0.8 * torch.randn(20, 7, generator=generator)
    value = linear_cka(x, y)
    assert 0.2 < value < 0.95
    assert value == pytest.approx(kornblith_cka(x, y))
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=generator))
    assert linear_cka(x, 3.7 * y @ q) == pytest.approx(value)
    assert linear_cka(x.double() + 1e6, y) == pytest.approx(value)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, y * torch.tensor([10.0, 1, 1, 1, 1, 1, 0.1])) != pytest.approx(value, abs=1e-3)


def test_neuron_overlap_matches_sklearn_jaccard_and_cosine():
    generator = torch.Generator().manual_seed(10)
    pivot = torch.rand(12, 40, generator=generator)
    other = (pivot + 0.3 * torch.randn(12, 40, generator=generator)).clamp(0, 1)
    jaccards = [jaccard_score((p > 0.5).numpy(), (o > 0.5).numpy()) for p, o in zip(pivot, other)]
    assert neuron_overlap(pivot, other) == pytest.approx(sum(jaccards) / 12)
    cosines = [brute_cosine(p.tolist(), o.tolist()) for p, o in zip(pivot, other)]
    assert neuron_overlap(pivot, other, binary=False) == pytest.approx(sum(cosines) / 12)
    # A neuron on in exactly half of the tokens is off; two sentences with no neuron on have identical states.
    assert neuron_overlap(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 1.0]])) == 0.5
    assert neuron_overlap(torch.zeros(1, 3), torch.zeros(1, 3)) == 1.0


def test_neuron_overlap_retrieval_is_strict_mexa_on_jaccard():
    generator = torch.Generator().manual_seed(11)
    pivot = torch.rand(15, 30, generator=generator)
    other = (pivot + 0.45 * torch.randn(15, 30, generator=generator)).clamp(0, 1)
    states_p, states_o = (pivot > 0.5).numpy(), (other > 0.5).numpy()
    sims = [[jaccard_score(states_p[i], states_o[j]) for j in range(15)] for i in range(15)]
    hits = sum(all(sims[i][i] > sims[i][j] and sims[i][i] > sims[j][i] for j in range(15) if j != i) for i in range(15))
    assert 0 < hits < 15
    assert neuron_overlap_retrieval(pivot, other) == pytest.approx(hits / 15)
    assert neuron_overlap_retrieval(pivot, pivot) == 1.0


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_more_sentences():
    per_sentence = partial(mexa, per_sentence=True)
    widths = []
    for n in (60, 960):
        pivot, other = noisy_pairs(n, 64, 3.0, seed=12)
        low, high = bootstrap_ci(per_sentence, pivot, other)
        assert low <= mexa(pivot, other) <= high
        widths.append(high - low)
    assert 0 < widths[1] < widths[0] / 2
    narrow, wide = bootstrap_ci(per_sentence, pivot, other, level=0.5), bootstrap_ci(per_sentence, pivot, other)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_ci_resamples_jointly_and_all_paths_agree():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    y = x + torch.randn(40, 6, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    # Same rows for every matrix: identical inputs stay identical in every resample.
    assert bootstrap_ci(lambda a, b: float(torch.equal(a, b)), x, x, n_boot=20) == (1.0, 1.0)
    # Per-sentence scores, recomputation, and CKA's weighted form see the same resamples.
    scores = bootstrap_ci(lambda a, b: (a * b).sum(dim=1), x, y, n_boot=200)
    recomputed = bootstrap_ci(lambda a, b: (a * b).sum(dim=1).mean().item(), x, y, n_boot=200)
    assert scores == pytest.approx(recomputed, abs=1e-12)
    weighted = bootstrap_ci(linear_cka, x, y, n_boot=200)
    assert weighted == pytest.approx(bootstrap_ci(lambda a, b: linear_cka(a, b), x, y, n_boot=200), abs=1e-10)
    assert weighted[0] < linear_cka(x, y) < weighted[1]
    # Recomputing MEXA on resamples (the float form) counts repeated sentences as misses.
    assert bootstrap_ci(mexa, x, x, n_boot=20)[1] < 0.6
    assert bootstrap_ci(partial(mexa, per_sentence=True), x, x, n_boot=20) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same sentences"):
        bootstrap_ci(linear_cka, x, y[:-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 16)
    sites = [Site(0, "resid"), Site(2, "resid"), Site(4, "resid"), Site(1, "head")]
    out = tmp_path_factory.mktemp("metrics") / "s"
    return capture_to_store(model, tokenizer, corpus, sites, out, shard_size=8, tokenization=Tokenization(batch_size=4))


def test_measure_store_equals_the_pure_functions(store):
    table = measure(store, metrics="all", ci=True, n_boot=50)
    assert list(table.columns) == ["layer", "language", "metric", "value", "ci_low", "ci_high"]
    pair_rows = table[table.metric != "langid_acc"]
    assert len(pair_rows) == 3 * 2 * (len(ALL_METRICS) - 1)
    assert pair_rows.groupby("layer").size().to_dict() == {0: 12, 2: 12, 4: 12}
    langid = table[table.metric == "langid_acc"]
    assert list(langid.layer) == [0, 2, 4] and set(langid.language) == {"all"}
    direct = LanguageIDProbe().fit(store).scores_
    assert langid.value.tolist() == pytest.approx(direct[direct.metric == "langid_acc"].value.tolist())
    for layer in (0, 2, 4):
        vectors = {language: store.get(Site(layer, "resid"), language) for language in ("eng", "deu", "jpn")}
        strong = strong_alignment_map_by_language(vectors)
        for language in ("deu", "jpn"):
            pivot, other = vectors["eng"], vectors[language]
            expected = {
                "mexa": mexa(pivot, other),
                "retrieval_top1": retrieval_top1(pivot, other),
                "retrieval_top1_reverse": retrieval_top1_reverse(pivot, other),
                "strong_map": strong[language],
                "matched_random_gap": matched_random_gap(pivot, other)["gap"],
                "cka": linear_cka(pivot, other),
            }
            rows = pair_rows[(pair_rows.layer == layer) & (pair_rows.language == language)].set_index("metric")
            assert rows["value"].to_dict() == pytest.approx(expected)
            for name in ("mexa", "cka"):
                interval = bootstrap_ci(PAIR_METRICS[name], pivot, other, n_boot=50)
                assert (rows.loc[name, "ci_low"], rows.loc[name, "ci_high"]) == pytest.approx(interval)
    assert (pair_rows.ci_low <= pair_rows.ci_high).all()
    assert table.value.between(-1, 1).all() and table.value.nunique() > 10


def test_measure_store_default_metrics_and_head_sites(store):
    table = measure(store)
    assert list(table.columns) == ["layer", "language", "metric", "value"]
    assert list(table.metric.unique()) == ["retrieval_top1", "mexa"] and len(table) == 12
    heads = measure(store, metrics=("mexa", "cka"), component="head", pivot="deu")
    pivot, other = store.get(Site(1, "head"), "deu"), store.get(Site(1, "head"), "eng")
    assert pivot.ndim == 3
    assert heads.set_index(["language", "metric"]).loc["eng", "value"].to_dict() == pytest.approx(
        {"mexa": mexa(pivot.flatten(1), other.flatten(1)), "cka": linear_cka(pivot.flatten(1), other.flatten(1))}
    )


def test_measure_store_errors_say_what_is_wrong(store):
    with pytest.raises(ValueError, match="pivot language 'fra' is not in"):
        measure(store, pivot="fra")
    with pytest.raises(ValueError, match="no 'mlp_out' sites"):
        measure(store, component="mlp_out")
    with pytest.raises(ValueError, match=r"unknown metrics \['neuron_overlap'\]"):
        measure(store, metrics=["mexa", "neuron_overlap"])


def test_measure_store_on_an_activity_store_gives_neuron_overlap(tmp_path):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 12)
    sites = [Site(1, "mlp_gate"), Site(3, "mlp_gate")]
    activity = capture_to_store(model, tokenizer, corpus, sites, tmp_path / "a", pooling="active")
    table = measure(activity, metrics="all", component="mlp_gate")
    assert set(table.metric) == {"neuron_overlap", "neuron_overlap_retrieval"}
    fractions = activity.get(Site(3, "mlp_gate"), "deu")
    assert 0 < fractions.mean() < 1 and fractions.min() >= 0 and fractions.max() <= 1 + 1e-6
    row = table[(table.layer == 3) & (table.metric == "neuron_overlap")]
    assert row.value.item() == pytest.approx(neuron_overlap(activity.get(Site(3, "mlp_gate"), "eng"), fractions))
    with pytest.raises(ValueError, match="available: neuron_overlap"):
        measure(activity, metrics="mexa", component="mlp_gate")
    # NeuronXA's NASCA needs the position-weighted states: a store pooled 'nas' measures it, and only it.
    states = capture_to_store(model, tokenizer, corpus, sites, tmp_path / "s", pooling="nas")
    table = measure(states, metrics="all", component="mlp_gate")
    assert set(table.metric) == {"nasca"}
    site = Site(3, "mlp_gate")
    row = table[table.layer == 3]
    assert row.value.item() == pytest.approx(neuronxa(states.get(site, "eng"), states.get(site, "deu")))


def test_measure_takes_in_memory_activations_and_gives_the_stores_numbers(store):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 16)
    memory = capture_corpus(model, tokenizer, corpus, store.sites, tokenization=Tokenization(batch_size=4))
    from_store, from_memory = measure(store, metrics="all"), measure(memory, metrics="all")
    assert from_store.drop(columns="value").equals(from_memory.drop(columns="value"))
    assert from_memory.value.tolist() == pytest.approx(from_store.value.tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "fn, a, b, message",
    [
        (retrieval_top1, (10, 4), (8, 4), "retrieval: the two sides hold 10 and 8 sentences"),
        (mexa, (10, 4), (1, 4), "mexa: the two sides hold 10 and 1 sentences"),
        (mexa, (1, 4), (1, 4), "mexa needs at least 2 sentences, got 1"),
        (linear_cka, (2, 4), (2, 3), "cka needs at least 3 sentences"),
        (matched_random_gap, (6, 4), (6, 5), "matched_random_gap: vectors of different widths"),
        (neuron_overlap, (5, 4), (6, 4), "neuron_overlap: the two sides hold 5 and 6"),
    ],
)
def test_metrics_refuse_inputs_they_cannot_score(fn, a, b, message):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(MetricError, match=message):
        fn(torch.randn(*a, generator=g), torch.randn(*b, generator=g))


def test_metrics_refuse_nan_rows_and_impossible_k():
    x, y = noisy_pairs(6, 4, 0.5, seed=1)
    y[4, 2] = float("nan")
    for fn in (mexa, retrieval_top1, linear_cka, matched_random_gap):
        with pytest.raises(MetricError, match=r"the other matrix \(6, 4\) has NaN or infinite values in rows \[4\]"):
            fn(x, y)
    with pytest.raises(MetricError, match="NaN"):
        strong_alignment_ap({"eng": x, "deu": y})
    with pytest.raises(MetricError, match="k must be between 1 and the 6"):
        retrieval_topk(x, x, 7)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "bloom"])
def test_mexa_of_hidden_sites_equals_the_released_mexa_pipeline(family):
    """Weighted pooling of ``hidden`` sites (batched, padded) gives MEXA's released numbers: one sentence at a
    time through output_hidden_states (the last one after the final norm)."""
    model, tokenizer = tiny(family)
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 16)
    sites = [Site(layer, "hidden") for layer in range(n_layers(model) + 1)]
    acts = capture_corpus(model, tokenizer, corpus, sites, pooling="weighted", tokenization=Tokenization(batch_size=5))
    table = measure(acts, metrics=["mexa"], component="hidden").set_index(["language", "layer"])["value"]
    for lang, per_layer in reference_mexa(model, tokenizer, corpus).items():
        assert [table[lang, layer] for layer in range(len(per_layer))] == pytest.approx(per_layer), (family, lang)
    last = Site(n_layers(model), "resid")  # hidden.L is after the final norm, resid.L before it
    before_norm = capture_corpus(model, tokenizer, corpus.subset(["deu"]), [last], pooling="weighted").get(last, "deu")
    assert not torch.allclose(acts.get(sites[-1], "deu"), before_norm)
