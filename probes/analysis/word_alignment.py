"""Word alignments read off per-token representations, as SimAlign computes them (Jalili Sabet et al., 2020).

SimAlign (cisnlp/simalign) scores every pair of subword tokens of a sentence and its translation by
``(cos + 1) / 2``, aligns token ``i`` with token ``j`` when each is the other's best match ("Argmax", its
``inter`` matrix: the forward argmax of each source row times the backward argmax of each target column), and
reports a pair of words as aligned when any of their tokens are (``token_type="bpe"``, its default). It drops
the special tokens around the sentence; for a causal LM that is the BOS.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.analysis.alignment import MetricError


def similarity(source: Float[Tensor, "m d"], target: Float[Tensor, "n d"]) -> Float[Tensor, "m n"]:
    """SimAlign's similarity: cosine rescaled to [0, 1]. Each pair is summed on its own, not in a matrix product,
    so tokens with identical vectors (a repeated token at the embeddings) score exactly alike and ties go to the
    first token, as argmax breaks them."""
    source = torch.nn.functional.normalize(source.double(), dim=-1)
    target = torch.nn.functional.normalize(target.double(), dim=-1)
    return ((source[:, None, :] * target[None, :, :]).sum(dim=-1) + 1.0) / 2.0


def mutual_argmax(scores: Float[Tensor, "m n"]) -> Bool[Tensor, "m n"]:
    """Token pairs that are each other's best match (SimAlign's Argmax; the first maximum wins ties)."""
    m, n = scores.shape
    forward = torch.zeros(m, n, dtype=torch.bool)
    forward[torch.arange(m), scores.argmax(dim=1)] = True
    backward = torch.zeros(m, n, dtype=torch.bool)
    backward[scores.argmax(dim=0), torch.arange(n)] = True
    return forward & backward


def word_alignments(
    source: Float[Tensor, "m d"],
    target: Float[Tensor, "n d"],
    source_words: Int[Tensor, " m"] | Sequence[int],
    target_words: Int[Tensor, " n"] | Sequence[int],
) -> list[tuple[int, int]]:
    """Aligned (source word, target word) pairs, sorted: a pair is aligned when any of its tokens are mutual best
    matches. ``source_words[i]``: the word token ``i`` belongs to (tokens outside every word: pass them out)."""
    if len(source_words) != len(source) or len(target_words) != len(target):
        raise MetricError(
            f"{len(source)} and {len(target)} tokens, but word indices for {len(source_words)} and {len(target_words)}"
        )
    aligned = mutual_argmax(similarity(source, target)).nonzero().tolist()
    return sorted({(int(source_words[i]), int(target_words[j])) for i, j in aligned})


def word_of_token(offsets: Sequence[tuple[int, int]], text: str) -> list[int]:
    """For each token's character span in ``text``, the whitespace-separated word its first non-space character
    belongs to (-1 for a token without one, such as BOS)."""
    word_at, word = [], -1
    for position, char in enumerate(text):
        if not char.isspace() and (position == 0 or text[position - 1].isspace()):
            word += 1
        word_at.append(word)
    out = []
    for start, stop in offsets:
        inside = [p for p in range(start, stop) if not text[p].isspace()]
        out.append(word_at[inside[0]] if inside else -1)
    return out
