"""SteerMoE's risk differences transcribed from its released code (JACKPURCELL/SteerMoE demo.py: calc_risk_diff),
the reference the SteerMoE tests compare with."""

from __future__ import annotations

import numpy as np
import pandas as pd


def reference_risk_diff(prob1: np.ndarray, prob2: np.ndarray, k: int) -> pd.DataFrame:
    """calc_risk_diff: prob (tokens, layers, experts); argsort, the last k are activated, the rest not."""
    tables = []
    for probs in (prob1, prob2):
        a, d = np.zeros(probs.shape[1:]), np.zeros(probs.shape[1:])
        order = np.argsort(probs, axis=-1)
        for token in range(probs.shape[0]):
            for layer in range(probs.shape[1]):
                a[layer, order[token, layer, -k:]] += 1
                d[layer, order[token, layer, :-k]] += 1
        tables.append(a / (a + d))
    rows = [
        {"layer": layer, "expert": expert, "risk_diff": tables[0][layer, expert] - tables[1][layer, expert]}
        for layer in range(prob1.shape[1])
        for expert in range(prob1.shape[2])
    ]
    df = pd.DataFrame(rows)
    df["risk_diff_abs"] = df["risk_diff"].abs()
    return df
