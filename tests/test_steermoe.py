"""SteerMoE: risk differences and expert selection against transcriptions of its released code (demo.py:
calc_risk_diff, src/utils.py: steer_moe), and the closed-loop method built from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny
from reference_steermoe import reference_risk_diff
from probes.analysis import risk_difference
from probes.capture import Tokenization, trace_router
from probes.data import demo_corpus
from steer.router import BanExperts, ForceExperts, steermoe_experts
from steer.methods import fit_methods, settings


def reference_selection(df: pd.DataFrame, n_pos: int, n_neg: int, k: int) -> dict[tuple[int, int], int]:
    """steer_moe: sort by |risk_diff|, the first n_pos positive and n_neg negative; set_moe's weights (+1 forced
    while fewer than k are set in the layer, -1 banned)."""
    df = df.sort_values(by="risk_diff_abs", ascending=False).reset_index(drop=True)
    chosen = pd.concat([df[df.risk_diff > 0].head(n_pos), df[df.risk_diff < 0].head(n_neg)], ignore_index=True)
    weights: dict[tuple[int, int], int] = {}
    for row in chosen.to_dict(orient="records"):
        layer, expert = int(row["layer"]), int(row["expert"])
        if row["risk_diff"] > 0:
            if sum(1 for (lay, _), w in weights.items() if lay == layer and w > 0) < k:
                weights[layer, expert] = 1
        else:
            weights[layer, expert] = -1
    return weights


def as_weights(edits) -> dict[tuple[int, int], int]:
    weights = {}
    for edit in edits:
        sign = 1 if isinstance(edit, ForceExperts) else -1
        assert isinstance(edit, (ForceExperts, BanExperts))
        for layer, experts in edit.experts.items():
            weights |= {(layer, int(e)): sign for e in experts}
    return weights


@pytest.mark.parametrize("seed", [0, 1])
def test_risk_difference_and_selection_equal_the_released_code(seed):
    g = torch.Generator().manual_seed(seed)
    prob1 = torch.softmax(torch.randn(40, 3, 8, generator=g), -1)
    prob2 = torch.softmax(torch.randn(30, 3, 8, generator=g) + torch.linspace(0, 2, 8), -1)
    k = 2
    reference = reference_risk_diff(prob1.numpy(), prob2.numpy(), k)
    risk = {layer + 1: risk_difference(prob1[:, layer], prob2[:, layer], k) for layer in range(3)}
    for row in reference.itertuples():
        assert risk[row.layer + 1][row.expert].item() == pytest.approx(row.risk_diff, abs=1e-12)
    # distinct |risk| values: the reference's unstable sort and ours agree
    jitter = {layer: values + 1e-9 * torch.arange(8) * layer for layer, values in risk.items()}
    table = pd.DataFrame(
        [
            {"layer": layer - 1, "expert": e, "risk_diff": float(v)}
            for layer, values in jitter.items()
            for e, v in enumerate(values)
        ]
    )
    table["risk_diff_abs"] = table["risk_diff"].abs()
    for n_pos, n_neg in ((3, 3), (6, 2)):
        expected = {(layer + 1, e): w for (layer, e), w in reference_selection(table, n_pos, n_neg, k).items()}
        assert as_weights(steermoe_experts(jitter, n_force=n_pos, n_ban=n_neg, k=k)) == expected
    with pytest.raises(ValueError, match="asked for 99 positive"):
        steermoe_experts(jitter, n_force=99, n_ban=1, k=k)


def test_the_closed_loop_steermoe_setting_is_built_from_token_level_routing():
    model, tokenizer = tiny("mixtral")
    corpus = demo_corpus().subset(["eng", "deu"], 10)
    found = fit_methods(model, tokenizer, corpus, languages=["deu"], methods=["steermoe"])
    content = Tokenization(exclude_bos=True)  # the released code counts the sentence's tokens, not BOS
    english, german = (
        trace_router(model, tokenizer, corpus.texts(lang), tokenization=content) for lang in ("eng", "deu")
    )
    k = english.ids[english.layers[0]].shape[1]
    stacked = {
        lang: np.stack([trace.probs[layer].numpy() for layer in trace.layers], axis=1)
        for lang, trace in (("eng", english), ("deu", german))
    }
    reference = reference_risk_diff(stacked["eng"], stacked["deu"], k)
    for row in reference.itertuples():
        assert found["steermoe"]["risk"]["deu"][english.layers[row.layer]][row.expert].item() == pytest.approx(
            row.risk_diff
        )
    (setting,) = [s for s in settings(found) if s.method == "steermoe"]
    plan = setting.plan("deu", [])
    n = len(english.layers)
    n_pos = min(n, int((reference.risk_diff > 0).sum()))
    n_neg = min(n, int((reference.risk_diff < 0).sum()))
    assert as_weights(edit for edit, _ in plan) == as_weights(
        steermoe_experts(found["steermoe"]["risk"]["deu"], n_force=n_pos, n_ban=n_neg, k=k)
    )
    assert all(schedule.excludes("eng") and not schedule.excludes("deu") for _, schedule in plan)
