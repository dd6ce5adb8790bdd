"""An independent transcription of MEXA's released code (cisnlp/Mexa: embed_extractor.py, compute_mexa.py), used
as the reference our MEXA is compared with."""

from __future__ import annotations

import numpy as np
import torch


def weighted_embeddings(layer: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """embed_extractor.weighted_embeddings: token t (1-based) weighs t; one sentence, no padding."""
    weights = attention_mask * torch.arange(1, layer.shape[1] + 1)[None]
    return ((layer * weights[..., None]).sum(1) / weights.sum(-1)[:, None]).squeeze().double().numpy()


def mexa(matrix: np.ndarray) -> float:
    """compute_mexa.mexa: the share of diagonal entries strictly above the rest of their row and column."""
    n = len(matrix)
    count = 0
    for i in range(n):
        if matrix[i, i] > np.delete(matrix[i], i).max() and matrix[i, i] > np.delete(matrix[:, i], i).max():
            count += 1
    return count / n


def reference_mexa(model, tokenizer, corpus, pivot: str = "eng") -> dict[str, list[float]]:
    """MEXA per layer (every entry of output_hidden_states) of each language against ``pivot``: each sentence
    alone through the causal LM, position-weighted pooling, cosine similarity matrix, strict diagonal count."""
    embeddings = {}
    for lang in corpus.languages:
        per_sentence = []
        for text in corpus.texts(lang):
            tokens = tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                states = model(**tokens, output_hidden_states=True)["hidden_states"]
            per_sentence.append([weighted_embeddings(layer.float(), tokens.attention_mask) for layer in states])
        embeddings[lang] = np.array(per_sentence)  # (sentences, layers, hidden)
    out = {}
    for lang in corpus.languages:
        if lang == pivot:
            continue
        scores = []
        for layer in range(embeddings[pivot].shape[1]):
            p, q = embeddings[pivot][:, layer], embeddings[lang][:, layer]
            cosine = (p @ q.T) / np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(q, axis=1))  # 1 - scipy cosine
            scores.append(mexa(cosine))
        out[lang] = scores
    return out
