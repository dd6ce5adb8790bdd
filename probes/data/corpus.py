"""Parallel corpora: N sentences x L languages, keyed by (sentence id, language).

:class:`ParallelCorpus` holds line-aligned translations; :mod:`probes.data.readers` builds one from files::

    corpus = load_corpus("path/to/ntrex", langs=["eng", "deu", "zho-CN"], max_sentences=200)
    train, test = corpus.split(test_fraction=0.2, seed=0)   # NTREX: whole documents go to one side

Misaligned or empty input is an error (:class:`CorpusError`) naming the language and the sentence, never a
silent truncation. Texts are stripped of surrounding whitespace.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from probes.data.codes import CorpusError, normalize_language


@dataclass(frozen=True, repr=False)
class ParallelCorpus:
    """Sentence-aligned texts in several languages.

    ``texts_by_language[lang][i]`` is the translation of sentence ``ids[i]``; ``documents[i]``, when known,
    is the document that sentence belongs to. Keys are normalised with :func:`normalize_language`; the
    stored mapping is read-only and the texts are tuples.
    """

    ids: tuple[str, ...]
    texts_by_language: Mapping[str, tuple[str, ...]]
    documents: tuple[str, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        texts = self._normalised_texts()
        documents = None if self.documents is None else tuple(self.documents)
        where = f"corpus {self.name!r}" if self.name else "corpus"
        if not ids or not texts:
            raise CorpusError(f"{where} is empty: it needs at least one sentence and one language")
        _check_ids(ids, where)
        for language, column in texts.items():
            _check_texts(column, ids, language, where)
        if documents is not None:
            _check_documents(documents, len(ids), where)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "texts_by_language", MappingProxyType(texts))
        object.__setattr__(self, "documents", documents)

    def _normalised_texts(self) -> dict[str, tuple[str, ...]]:
        texts: dict[str, tuple[str, ...]] = {}
        original: dict[str, str] = {}
        for key, column in self.texts_by_language.items():
            language = normalize_language(key)
            if language in texts:
                raise CorpusError(f"languages {original[language]!r} and {key!r} are both {language!r}; keep one")
            texts[language], original[language] = tuple(column), key
        return texts

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes, in insertion order."""
        return tuple(self.texts_by_language)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        documents = "" if self.documents is None else f", documents={len(set(self.documents))}"
        return (
            f"ParallelCorpus(name={self.name!r}, sentences={len(self)}, "
            f"languages=[{' '.join(self.languages)}]{documents})"
        )

    def texts(self, lang: str) -> list[str]:
        """The texts of one language, aligned with :attr:`ids`."""
        (language,) = self._resolve([lang])
        return list(self.texts_by_language[language])

    def pairs(self, a: str, b: str) -> list[tuple[str, str]]:
        """``(text in a, text in b)`` for every sentence."""
        return list(zip(self.texts(a), self.texts(b)))

    def subset(self, langs: Sequence[str] | None = None, n: int | None = None) -> ParallelCorpus:
        """The first ``n`` sentences (all when ``None``) in ``langs`` (all when ``None``), in that order."""
        languages = self._resolve(langs)
        if n is not None and n < 1:
            raise CorpusError(f"subset of {self.name or 'corpus'}: n must be at least 1, got {n}")
        rows = slice(None, n)
        return replace(
            self,
            ids=self.ids[rows],
            texts_by_language={language: self.texts_by_language[language][rows] for language in languages},
            documents=None if self.documents is None else self.documents[rows],
        )

    def rows(self, start: int, stop: int) -> ParallelCorpus:
        """Sentences ``start`` to ``stop - 1`` (0-based, e.g. held-out rows), in every language."""
        if not 0 <= start < stop <= len(self):
            raise CorpusError(
                f"rows {start}:{stop} of {self.name or 'corpus'}: need 0 <= start < stop <= {len(self)} (its size)"
            )
        keep = [start <= row < stop for row in range(len(self))]
        return replace(self._rows(keep, ""), name=f"{self.name}[{start}:{stop}]")

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ParallelCorpus, ParallelCorpus]:
        """Deterministic ``(train, test)`` split; both parts keep corpus order.

        Whole documents go to one side when :attr:`documents` is known, single sentences otherwise. Groups are
        shuffled with ``random.Random(seed)`` and moved to test until it holds ``test_fraction`` of the
        sentences; train always keeps at least one group.
        """
        if not 0 < test_fraction < 1:
            raise CorpusError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
        groups = self.documents if self.documents is not None else self.ids
        sizes = Counter(groups)
        if len(sizes) < 2:
            unit = "document" if self.documents is not None else "sentence"
            raise CorpusError(f"cannot split {self!r}: it has a single {unit}; train and test must both be non-empty")
        order = sorted(sizes)
        random.Random(seed).shuffle(order)
        test_groups: set[str] = set()
        test_size = 0
        for group in order[:-1]:
            if test_size >= test_fraction * len(self):
                break
            test_groups.add(group)
            test_size += sizes[group]
        is_test = [group in test_groups for group in groups]
        return self._rows([not flag for flag in is_test], "train"), self._rows(is_test, "test")

    def _rows(self, keep: list[bool], part: str) -> ParallelCorpus:
        def pick(values: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(value for value, flag in zip(values, keep) if flag)

        return replace(
            self,
            ids=pick(self.ids),
            texts_by_language={language: pick(column) for language, column in self.texts_by_language.items()},
            documents=None if self.documents is None else pick(self.documents),
            name=f"{self.name}:{part}" if self.name else part,
        )

    def fingerprint(self, langs: Sequence[str] | None = None) -> str:
        """SHA-256 (hex) of the ids and the texts of ``langs`` (all when ``None``; order does not matter)."""
        chosen = sorted(self._resolve(langs))
        payload = {"ids": self.ids, "texts": {language: self.texts_by_language[language] for language in chosen}}
        text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"xlalign-corpus-v1\n" + text.encode("utf-8")).hexdigest()

    def _resolve(self, langs: Sequence[str] | None) -> tuple[str, ...]:
        if langs is None:
            return self.languages
        if isinstance(langs, str) or not langs:
            raise CorpusError(f"expected a non-empty list of language codes, got {langs!r}")
        languages = tuple(dict.fromkeys(normalize_language(lang) for lang in langs))
        unknown = [language for language in languages if language not in self.texts_by_language]
        if unknown:
            raise CorpusError(
                f"language(s) {', '.join(unknown)} not in {self.name or 'corpus'}; "
                f"available: {' '.join(self.languages)}"
            )
        return languages


def _check_ids(ids: tuple[str, ...], where: str) -> None:
    seen: dict[str, int] = {}
    for row, sentence_id in enumerate(ids, start=1):
        if not isinstance(sentence_id, str) or not sentence_id.strip():
            raise CorpusError(f"{where}: sentence {row} has id {sentence_id!r}; ids must be non-empty strings")
        if sentence_id in seen:
            raise CorpusError(f"{where}: id {sentence_id!r} is used by sentences {seen[sentence_id]} and {row}")
        seen[sentence_id] = row


def _check_texts(column: tuple[str, ...], ids: tuple[str, ...], language: str, where: str) -> None:
    if len(column) != len(ids):
        raise CorpusError(
            f"{where}: language {language!r} has {len(column)} texts but there are {len(ids)} sentence ids; "
            "every language needs one text per sentence"
        )
    for sentence_id, text in zip(ids, column):
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{where}: empty text for language {language!r}, sentence id {sentence_id!r}")


def _check_documents(documents: tuple[str, ...], n: int, where: str) -> None:
    if len(documents) != n:
        raise CorpusError(f"{where}: {len(documents)} document ids for {n} sentences; give one per sentence")
    for row, document in enumerate(documents, start=1):
        if not isinstance(document, str) or not document.strip():
            raise CorpusError(f"{where}: sentence {row} has document id {document!r}; expected a non-empty string")
