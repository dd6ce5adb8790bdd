"""SteerMoE's risk differences count the sentences' own tokens as its released code does (demo.py counts the
tokens of the target message found inside the prompt): BOS is fed to the model but not counted."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny
from probes.capture import trace_router
from probes.data import demo_corpus
from steer.methods import fit_methods
from reference_steermoe import reference_risk_diff


def content_tokens(trace, tokenizer, texts) -> np.ndarray:
    """(tokens, layers, experts) router probabilities of every token but the BOS each text starts with."""
    assert all(tokenizer(text).input_ids[0] == tokenizer.bos_token_id for text in texts), "texts start with BOS"
    keep = (trace.position > 0).numpy()
    return np.stack([trace.probs[layer].numpy()[keep] for layer in trace.layers], axis=1)


def test_risk_differences_leave_bos_out():
    model, tokenizer = tiny("mixtral")
    corpus = demo_corpus().subset(["eng", "deu"], 10)
    found = fit_methods(model, tokenizer, corpus, languages=["deu"], methods=["steermoe"])
    traces = {lang: trace_router(model, tokenizer, corpus.texts(lang)) for lang in ("eng", "deu")}
    k = found["steermoe"]["experts_per_token"]
    layers = traces["eng"].layers
    reference = reference_risk_diff(
        *(content_tokens(traces[lang], tokenizer, corpus.texts(lang)) for lang in ("eng", "deu")), k
    )
    with_bos = reference_risk_diff(
        *(np.stack([traces[lang].probs[layer].numpy() for layer in layers], axis=1) for lang in ("eng", "deu")), k
    )
    assert not np.allclose(reference.risk_diff, with_bos.risk_diff), "BOS changes the counts"
    for row in reference.itertuples():
        assert found["steermoe"]["risk"]["deu"][layers[row.layer]][row.expert].item() == pytest.approx(
            row.risk_diff, abs=1e-12
        )
