"""Language-specific attention heads (CLAIM; docs/methods.md): rank heads by how well they separate a language
from the pivot, and shift the best ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold, cross_validate
from torch import Tensor

from probes.analysis.activations import Activations
from probes.analysis.langid import check_folds, probe_pipeline
from probes.artifacts.shift_vector import ShiftVector
from probes.find.shifts import mean_shift
from probes.find.errors import FinderError


class HeadProbe:
    """Language-specific attention heads (CLAIM, Ye et al. 2025; paper only, no released code).

    For every (layer, head), a logistic regression (standardised features, ``C``) separates the pivot's
    pooled head outputs (the per-head input of the output projection) from language l's, scored with
    ``cv``-fold stratified cross-validation. Heads are ranked by the held-out log-likelihood (mean log
    probability of the true language, the negated log loss), then by accuracy: language ID saturates, so most
    heads reach accuracy 1.0 and ranking by accuracy alone would pick the earliest probed heads. The shift of a
    head is pivot mean minus l mean of its output. Selecting the top-k heads is our reading of the paper.

    After :meth:`fit`: ``ranking_`` (DataFrame ``layer, head, log_likelihood, accuracy, tied``, best first;
    ``tied``: another head has the same scores), ``shifts_`` (``{layer: (heads, head_dim)}``), ``model_`` (the
    identity of the model the activations came from).
    """

    def __init__(self, cv: int = 5, C: float = 1.0, max_iter: int = 1000, n_jobs: int | None = None) -> None:
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.n_jobs = n_jobs

    def fit(self, activations: Activations, language: str, *, pivot: str = "eng") -> HeadProbe:
        """Probe every ``head`` layer of ``activations`` (``(n, heads, head_dim)`` per sentence)."""
        rows, self.shifts_ = [], {}
        for layer, by_language in activations.by_layer("head", [pivot, language]):
            ours, theirs = by_language[pivot], by_language[language]
            if ours.dim() != 3:
                raise FinderError(f"layer {layer}: head activations are (n, heads, head_dim); got {tuple(ours.shape)}")
            check_folds({pivot: len(ours), language: len(theirs)}, self.cv, f"head layer {layer}")
            labels = np.r_[np.ones(len(ours)), np.zeros(len(theirs))]
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=0)
            for head in range(ours.shape[1]):
                features = torch.cat([ours[:, head], theirs[:, head]]).double().numpy()
                scores = cross_validate(
                    probe_pipeline(self.C, self.max_iter),
                    features,
                    labels,
                    cv=folds,
                    scoring=("neg_log_loss", "accuracy"),
                    n_jobs=self.n_jobs,
                )
                rows.append(
                    (layer, head, float(scores["test_neg_log_loss"].mean()), float(scores["test_accuracy"].mean()))
                )
            self.shifts_[layer] = mean_shift(ours, theirs)
        ranking = pd.DataFrame(rows, columns=["layer", "head", "log_likelihood", "accuracy"])
        ranking["tied"] = ranking.duplicated(["log_likelihood", "accuracy"], keep=False)
        self.ranking_ = ranking.sort_values(["log_likelihood", "accuracy"], ascending=False, kind="stable").reset_index(
            drop=True
        )
        self.pivot_, self.language_ = pivot, language
        self.model_ = dict(activations.model)
        return self

    def _tied_at(self, k: int) -> bool:
        """Whether the k-th head ties with the first one left out (the selection is then arbitrary there)."""
        if k >= len(self.ranking_):
            return False
        scores = self.ranking_[["log_likelihood", "accuracy"]]
        return bool((scores.iloc[k - 1] == scores.iloc[k]).all())

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` best-separating heads as ``(layer, head)``."""
        best = self.ranking_.head(k)
        return [(int(layer), int(head)) for layer, head in zip(best["layer"], best["head"])]

    def shift_vector(self, k: int) -> ShiftVector:
        """A ``head`` ShiftVector holding the shifts of the top-``k`` heads (other heads zero; layers without a
        top head left out); it recommends all its layers."""
        heads = self.top_heads(k)
        vectors: dict[int, Tensor] = {}
        for layer, head in heads:
            vectors.setdefault(layer, torch.zeros_like(self.shifts_[layer]))[head] = self.shifts_[layer][head]
        best = self.ranking_.head(k)
        params = {
            "k": k,
            "heads": [list(h) for h in heads],
            "cv": self.cv,
            "C": self.C,
            "log_likelihood": best["log_likelihood"].tolist(),
            "accuracy": best["accuracy"].tolist(),
            "tied_at_cutoff": self._tied_at(k),
        }
        return ShiftVector(
            vectors, "head", self.pivot_, self.language_, "claim", params, self.model_, tuple(sorted(vectors))
        )
