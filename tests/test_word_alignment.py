"""Word alignments as SimAlign computes them: its Argmax rule, transcribed from cisnlp/simalign in numpy
(forward argmax rows times backward argmax columns on (cos + 1) / 2, then subword pairs to word pairs). The
reference's matrix product may break exact ties (a token repeated at the embeddings) either way; the
transcription, like xlalign, scores each pair on its own so that ties go to the first token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.analysis import mutual_argmax, similarity, word_alignments, word_of_token
from reference_simalign import simalign_argmax


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_word_alignments_equal_simalign_argmax(m, n, seed):
    generator = np.random.default_rng(seed)
    x, y = generator.normal(size=(m, 6)), generator.normal(size=(n, 6))
    x_words = sorted(generator.integers(0, max(1, m // 2) + 1, size=m).tolist())
    y_words = sorted(generator.integers(0, max(1, n // 2) + 1, size=n).tolist())
    ours = word_alignments(torch.tensor(x), torch.tensor(y), x_words, y_words)
    assert ours == simalign_argmax(x, y, x_words, y_words)


def test_mutual_argmax_keeps_only_pairs_that_choose_each_other():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    assert mutual_argmax(scores).tolist() == [[True, False], [False, False], [False, True]]
    assert similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [0.0, 2.0]])).tolist() == [[0.0, 0.5]]


def test_tokens_map_to_the_words_their_characters_start_in():
    text = "Guten  Morgen, Welt"
    offsets = [(0, 0), (0, 3), (3, 5), (5, 7), (7, 13), (13, 14), (14, 19)]
    assert word_of_token(offsets, text) == [-1, 0, 0, -1, 1, 1, 2]  # (5, 7) holds only spaces
    with pytest.raises(ValueError, match="3 and 1 tokens, but word indices for 2 and 1"):
        word_alignments(torch.ones(3, 2), torch.ones(1, 2), [0, 1], [0])


def test_exact_ties_go_to_the_first_token():
    repeated = torch.tensor([[0.3, -1.2, 0.7]])
    target = torch.cat([torch.tensor([[5.0, 1.0, 0.0]]), repeated, repeated, repeated])
    assert word_alignments(repeated, target, [0], [0, 1, 2, 3]) == [(0, 1)]
