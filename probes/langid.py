"""Layer-wise language-ID probes (METHODS, "Finding what is language-specific", item 7).

Per layer, a logistic regression predicts the language of a sentence from its pooled activation. High
cross-validated accuracy means the layer is language-specific; accuracy near chance (1 / #languages) means
it is language-neutral.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, recall_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from probes.sites import Site
from probes.store import ActivationStore

# Pooled activations by layer and language: an ActivationStore, or {layer: {language: (n, *dims)}}.
Activations = ActivationStore | Mapping[int, Mapping[str, Float[Tensor, "n *dims"]]]


def iter_layers(
    data: Activations,
    component: str = "resid",
    languages: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> Iterator[tuple[int, dict[str, Float[Tensor, "n *dims"]]]]:
    """Yield ``(layer, {language: activations})`` one layer at a time, in layer order.

    From a store, the ``component`` sites are read lazily (one layer in memory at a time); a dict is used as
    is (``component`` is ignored). ``languages`` and ``layers`` default to all of them; asking for a layer
    that is not there is an error.
    """
    available = (
        sorted(site.layer for site in data.sites if site.component == component)
        if isinstance(data, ActivationStore) else sorted(data)
    )  # fmt: skip
    where = f"{data.path} ({component!r} sites)" if isinstance(data, ActivationStore) else "the activations dict"
    if not available:
        raise ValueError(f"{where} holds no layers")
    missing = sorted(set(layers or ()) - set(available))
    if missing:
        raise ValueError(f"{where} has no layers {missing}; it has {available}")
    chosen = [layer for layer in available if layers is None or layer in layers]
    if isinstance(data, ActivationStore):
        for layer in chosen:
            site = Site(layer, component)
            yield layer, {lang: data.get(site, lang) for lang in languages or data.languages}
        return
    for layer in chosen:
        by_language = data[layer]
        wanted = list(languages or by_language)
        missing = [lang for lang in wanted if lang not in by_language]
        if missing:
            raise ValueError(f"layer {layer}: no activations for {missing}; it has {', '.join(by_language)}")
        yield layer, {lang: by_language[lang] for lang in wanted}


def check_folds(counts: Mapping[str, int], cv: int, where: str) -> None:
    """Raise if some class has fewer samples than cross-validation folds."""
    small = {label: n for label, n in counts.items() if n < cv}
    if small:
        raise ValueError(f"{where}: {cv}-fold cross-validation needs at least {cv} sentences per class; {small}")


def probe_pipeline(C: float, max_iter: int) -> Pipeline:
    """Standardised features, then an L2 logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


class LanguageIDProbe:
    """Cross-validated language identification from pooled activations, per layer.

    ``cv`` stratified folds (shuffled, seeded); ``C`` is the inverse L2 strength of the logistic regression
    (multinomial over all languages), fit on standardised features. After :meth:`fit`, ``scores_`` is a
    tidy table ``layer, language, metric, value`` with, per layer, ``langid_acc`` (language ``'all'``:
    accuracy of the out-of-fold predictions) and ``langid_recall`` per language (the share of that
    language's sentences identified correctly, out of fold). Both come from one
    ``cross_val_predict`` pass, so accuracy is pooled over folds rather than a mean of fold scores.
    """

    def __init__(self, cv: int = 5, C: float = 1.0, max_iter: int = 1000, n_jobs: int | None = None) -> None:
        self.cv = cv
        self.C = C
        self.max_iter = max_iter
        self.n_jobs = n_jobs

    def fit(
        self, data: Activations, component: str = "resid", languages: Sequence[str] | None = None
    ) -> LanguageIDProbe:
        """Probe every layer of ``component`` (``head`` sites are flattened to one vector per sentence)."""
        rows = []
        for layer, by_language in iter_layers(data, component, languages):
            names = list(by_language)
            if len(names) < 2:
                raise ValueError(f"layer {layer}: language ID needs at least two languages, got {names}")
            check_folds({lang: len(x) for lang, x in by_language.items()}, self.cv, f"layer {layer}")
            features = np.concatenate([x.flatten(1).double().numpy() for x in by_language.values()])
            labels = np.repeat(names, [len(x) for x in by_language.values()])
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=0)
            predicted = cross_val_predict(
                probe_pipeline(self.C, self.max_iter), features, labels, cv=folds, n_jobs=self.n_jobs
            )
            rows.append((layer, "all", "langid_acc", accuracy_score(labels, predicted)))
            recalls = recall_score(labels, predicted, labels=names, average=None)
            rows.extend((layer, lang, "langid_recall", float(r)) for lang, r in zip(names, recalls))
        self.scores_ = pd.DataFrame(rows, columns=["layer", "language", "metric", "value"])
        return self


class LanguageIdentifier:
    """Which language a text is in: character 1-4-gram TF-IDF and a linear classifier, trained on a corpus.

    Used to check the output language of generations (``predict``) and, for language-gated steering, the
    language of a prompt.
    """

    def __init__(self, ngram_range: tuple[int, int] = (1, 4), C: float = 10.0) -> None:
        self.ngram_range = ngram_range
        self.C = C

    def fit(self, corpus) -> LanguageIdentifier:
        """Train on every text of every language of a :class:`~probes.corpus.ParallelCorpus`."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [text for lang in corpus.languages for text in corpus.texts(lang)]
        labels = [lang for lang in corpus.languages for _ in corpus.texts(lang)]
        self.pipeline_ = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngram_range, sublinear_tf=True),
            LogisticRegression(C=self.C, max_iter=2000),
        ).fit(texts, labels)
        self.languages_ = tuple(self.pipeline_.classes_)
        return self

    def predict(self, texts: Sequence[str]) -> list[str]:
        return list(self.pipeline_.predict(list(texts)))
