"""Alignment metrics against brute-force references and known answers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from probes.metrics import cosine_matrix, mexa, retrieval_top1, retrieval_top1_reverse


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
    forward = sum(int(torch.tensor([brute_cosine(o.tolist(), p.tolist()) for p in pivot]).argmax() == i)
                  for i, o in enumerate(other)) / 30
    assert retrieval_top1(pivot, other) == pytest.approx(forward)


def test_mexa_is_strict_about_rows_and_columns():
    # Sentence 0's translation wins its row but loses its column: MEXA must not count it.
    pivot = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    other = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    sims = cosine_matrix(pivot, other)
    assert sims[0, 0] > sims[0, 1] and sims[1, 0] > sims[0, 0]
    assert mexa(pivot, other) == pytest.approx(brute_mexa(pivot, other)) == 0.5
