"""SimAlign's Argmax rule transcribed from cisnlp/simalign in numpy (forward argmax rows times backward argmax
columns on (cos + 1) / 2, then subword pairs to word pairs): the reference the word-alignment tests compare with."""

from __future__ import annotations

import numpy as np


def simalign_argmax(x: np.ndarray, y: np.ndarray, x_words: list[int], y_words: list[int]) -> list[tuple[int, int]]:
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_y = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = ((unit_x[:, None, :] * unit_y[None, :, :]).sum(-1) + 1.0) / 2.0  # per pair: exact ties stay ties
    m, n = sim.shape
    forward = np.eye(n)[sim.argmax(axis=1)]
    backward = np.eye(m)[sim.argmax(axis=0)]
    inter = forward * backward.transpose()
    return sorted({(x_words[i], y_words[j]) for i in range(m) for j in range(n) if inter[i, j] > 0})
