"""Cross-validated language identification from pooled activations: how language-specific a layer is.

High accuracy means the layer separates languages; accuracy near chance (1 / #languages) means it is
language-neutral. :class:`probes.find.langid.LanguageIDProbe` runs this per layer, sklearn-style.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, recall_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from probes.analysis.alignment import MetricError


def check_folds(counts: Mapping[str, int], cv: int, where: str) -> None:
    """Raise if some class has fewer samples than cross-validation folds."""
    small = {label: n for label, n in counts.items() if n < cv}
    if small:
        raise MetricError(f"{where}: {cv}-fold cross-validation needs at least {cv} sentences per class; {small}")


def probe_pipeline(C: float, max_iter: int) -> Pipeline:
    """Standardised features, then an L2 logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def language_id_scores(
    by_language: Mapping[str, Float[Tensor, "n *dims"]],
    *,
    cv: int = 5,
    C: float = 1.0,
    max_iter: int = 1000,
    n_jobs: int | None = None,
    where: str = "language ID",
) -> tuple[float, dict[str, float]]:
    """Out-of-fold accuracy over all languages and recall per language of a multinomial logistic regression.

    ``cv`` stratified folds (shuffled, seeded); ``C`` the inverse L2 strength; standardised features. Both
    numbers come from one ``cross_val_predict`` pass (accuracy pooled over folds, not a mean of fold scores).
    """
    names = list(by_language)
    if len(names) < 2:
        raise MetricError(f"{where}: language ID needs at least two languages, got {names}")
    check_folds({lang: len(x) for lang, x in by_language.items()}, cv, where)
    features = np.concatenate([x.flatten(1).double().numpy() for x in by_language.values()])
    if not np.isfinite(features).all():
        raise MetricError(f"{where}: the activations hold NaN or infinite values")
    labels = np.repeat(names, [len(x) for x in by_language.values()])
    folds = StratifiedKFold(cv, shuffle=True, random_state=0)
    predicted = cross_val_predict(probe_pipeline(C, max_iter), features, labels, cv=folds, n_jobs=n_jobs)
    recalls = recall_score(labels, predicted, labels=names, average=None)
    return float(accuracy_score(labels, predicted)), {lang: float(r) for lang, r in zip(names, recalls)}
