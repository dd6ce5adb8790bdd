"""Language identification from activations, per layer (docs/methods.md).

:class:`LanguageIDProbe` (sklearn-style) runs :func:`probes.analysis.langid.language_id_scores` on every layer:
high accuracy means the layer is language-specific, near chance (1 / #languages) language-neutral. The language
of generated text is :class:`probes.analysis.OutputLanguage`'s business.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from probes.analysis.activations import Activations
from probes.analysis.langid import language_id_scores


class LanguageIDProbe:
    """Cross-validated language identification from pooled activations, per layer.

    ``cv`` stratified folds (shuffled, seeded); ``C`` is the inverse L2 strength of the logistic regression
    (multinomial over all languages), fit on standardised features. After :meth:`fit`, ``scores_`` is a
    tidy table ``layer, language, metric, value`` with, per layer, ``langid_acc`` (language ``'all'``:
    accuracy of the out-of-fold predictions) and ``langid_recall`` per language (the share of that
    language's sentences identified correctly, out of fold).
    """

    def __init__(self, cv: int = 5, C: float = 1.0, max_iter: int = 1000, n_jobs: int | None = None) -> None:
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.n_jobs = n_jobs

    def fit(
        self, activations: Activations, component: str = "resid", languages: Sequence[str] | None = None
    ) -> LanguageIDProbe:
        """Probe every layer of ``component`` (``head`` sites are flattened to one vector per sentence)."""
        rows = []
        for layer, by_language in activations.by_layer(component, languages):
            accuracy, recalls = language_id_scores(
                by_language, cv=self.cv, C=self.C, max_iter=self.max_iter, n_jobs=self.n_jobs, where=f"layer {layer}"
            )
            rows.append((layer, "all", "langid_acc", accuracy))
            rows.extend((layer, lang, "langid_recall", recall) for lang, recall in recalls.items())
        self.scores_ = pd.DataFrame(rows, columns=["layer", "language", "metric", "value"])
        return self
