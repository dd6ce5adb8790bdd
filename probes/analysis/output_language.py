"""Which language generated text is in, and the language-confusion metrics of Marchisio et al. 2024.

"Understanding and Mitigating Language Confusion in LLMs" (code for-ai/language-confusion, ``compute_metrics.py``)
scores completions expected in language ``l``, and so does this module by default:

- a completion is normalised (cut at ``"\\nQ:"``, stripped, ASCII punctuation removed, ``—`` replaced by a
  space, ``،`` removed) and split into lines; each line is tokenised as ``l`` is written (jieba for Chinese,
  fugashi/MeCab for Japanese, whitespace otherwise) and lines of fewer than 5 tokens are dropped; a completion
  left with no line is skipped;
- a line's language is the identifier's best guess among all the languages it knows (fastText lid.176, see
  :mod:`probes.analysis.lid`) if its probability exceeds 0.3, else ``unknown``;
- **line-level pass rate** (LPR): the share of the scored completions every line of which is identified as ``l``;
  **1.0 when no completion is scored**, as the reference computes it (``1 - errors / max(1, scored)``);
- **word-level pass rate** (WPR), for exactly ar, hi, ja, ko, ru and zh: among the completions that pass at line
  level, the share none of whose tokens (stripped) is in the reference's English word list (its file ``words``,
  shipped here as ``english_words.txt.gz`` under the reference's Apache-2.0 licence: the lowercase entries longer
  than 3 characters); 1.0 when none passes.

Two differences remain, both forced by working offline: lid.176 is its compressed release ``lid.176.ftz``
(the reference downloads ``lid.176.bin``), and Japanese uses fugashi with ``unidic-lite`` (UniDic 2.1.2) where
the reference downloads the full UniDic. ``candidates`` and ``identifier="py3langid"`` are explicit options,
not the benchmark's metric.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import math
import string
from typing import Iterable, Sequence

import langcodes

from probes.analysis.lid import LID176, check, classify, labels
from probes.errors import XlalignError

THRESHOLD = 0.3  # the reference's fastText confidence bar
MIN_TOKENS = 5
WPR_LANGUAGES = frozenset({"ar", "hi", "ja", "ko", "ru", "zh"})  # the reference's: WPR is inaccurate elsewhere
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class OutputLanguageError(XlalignError):
    """A language the identifier does not know."""


@functools.lru_cache(maxsize=1024)
def iso639_1(language: str) -> str:
    """The identifiers' code of one of ours (``"arb"`` -> ``"ar"``, ``"zho-CN"`` -> ``"zh"``)."""
    return langcodes.Language.get(langcodes.standardize_tag(language, macro=True)).language


def script(language: str) -> str:
    """ISO 15924 script ``language`` is usually written in (``"Latn"``, ``"Cyrl"``, ``"Hans"``, ...)."""
    return langcodes.Language.get(language).maximize().script


def identifiable(language: str, identifier: str = LID176) -> bool:
    """Whether ``identifier`` identifies ``language`` (one of our codes)."""
    return iso639_1(language) in labels(identifier)


def normalise(completion: str) -> str:
    """The reference's ``normalize``: cut at ``"\\nQ:"``, strip, ASCII punctuation out, ``—`` -> space, ``،`` out."""
    text = completion.split("\nQ:")[0].strip().translate(_PUNCTUATION)
    return text.replace("—", " ").replace("،", "")


def tokens(line: str, language: str) -> list[str]:
    """``line`` tokenised as ``language`` (one of our codes) is written: jieba for Chinese, fugashi for Japanese,
    whitespace otherwise."""
    return _tokens(line, iso639_1(language))


@functools.lru_cache(maxsize=2**16)
def _tokens(line: str, code: str) -> list[str]:
    if code == "zh":
        return list(_jieba().cut(line))
    if code == "ja":
        return _mecab().parse(line).split()
    return line.split()


@functools.lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@functools.lru_cache(maxsize=1)
def _mecab():
    from fugashi import Tagger

    return Tagger("-O wakati -b 50000")


@functools.lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The reference's English lexicon: the lowercase entries longer than 3 characters of its ``words`` file."""
    with importlib.resources.files("probes.analysis").joinpath("english_words.txt.gz").open("rb") as raw:
        entries = gzip.decompress(raw.read()).decode("utf-8").splitlines()
    return frozenset(word.strip() for word in entries if word.strip().islower() and len(word.strip()) > 3)


def is_english_word(token: str) -> bool:
    """Whether the stripped token is in the reference's English lexicon (case-sensitive, as there)."""
    return token.strip() in english_words()


class OutputLanguage:
    """Identify the language of lines of text and score completions with the line- and word-level pass rates.

    ``identifier``: ``"lid176"`` (the reference's, default) or ``"py3langid"``; ``candidates`` (our codes)
    restricts it to those languages, an option that is not the benchmark's metric (a neighbouring language or a
    degenerate line is then forced onto a candidate)."""

    def __init__(
        self,
        candidates: Sequence[str] | None = None,
        *,
        identifier: str = LID176,
        threshold: float = THRESHOLD,
        min_tokens: int = MIN_TOKENS,
    ) -> None:
        check(identifier)
        self.identifier = identifier
        self.threshold = threshold
        self.min_tokens = min_tokens
        self._ours: dict[str, str] = {}
        for language in candidates if candidates is not None else ():
            if not identifiable(language, identifier):
                code = iso639_1(language)
                raise OutputLanguageError(f"language {language!r} ({code}) is not one {identifier} identifies")
            self._ours.setdefault(iso639_1(language), language)
        self._candidates = frozenset(self._ours) if candidates is not None else None

    def knows(self, language: str) -> bool:
        """Whether ``language`` can be identified (is the identifier's and, with candidates, among them)."""
        code = iso639_1(language)
        return code in self._candidates if self._candidates is not None else code in labels(self.identifier)

    def identify(self, lines: Iterable[str]) -> list[str]:
        """Per line (no newline): the language (one of ``candidates`` when given, else the identifier's code,
        e.g. ``"fr"``) or ``unknown``."""
        return [self._ours.get(code, code) for code in self._codes(lines)]

    def _codes(self, lines: Iterable[str]) -> list[str]:
        out = []
        for line in lines:
            code, probability = classify(self.identifier, line, self._candidates)
            out.append(code if probability > self.threshold else "unknown")
        return out

    def scores(self, completions: Sequence[str], language: str) -> dict[str, float]:
        """The reference's ``compute_metrics``: ``acc`` (mean share of a scored completion's lines identified as
        ``language``), ``lpr`` and, for ar, hi, ja, ko, ru, zh only, ``wpr``."""
        code = iso639_1(language)
        if not self.knows(language):
            among = f"the candidates {sorted(self._ours.values())}" if self._candidates is not None else self.identifier
            raise OutputLanguageError(f"language {language!r} ({code}) is not among {among}")
        scored = line_errors = word_errors = 0
        line_acc = []
        for completion in completions:
            lines = [(line, tokens(line, language)) for line in normalise(completion).split("\n")]
            lines = [(line, toks) for line, toks in lines if len(toks) >= self.min_tokens]
            if not lines:
                continue
            scored += 1
            wrong = sum(found != code for found in self._codes(line for line, _ in lines))
            if wrong:
                line_errors += 1
            elif any(is_english_word(token) for _, toks in lines for token in toks):
                word_errors += 1
            line_acc.append(1 - wrong / len(lines))
        out = {"acc": sum(line_acc) / len(line_acc) if line_acc else 1.0, "lpr": 1 - line_errors / max(1, scored)}
        if code in WPR_LANGUAGES:
            out["wpr"] = 1 - word_errors / max(1, scored - line_errors)
        return out

    def pass_rates(self, completions: Sequence[str], language: str) -> dict[str, float]:
        """``line_fidelity`` (LPR) and, for ar, hi, ja, ko, ru, zh, ``word_fidelity`` (WPR) of ``completions``."""
        found = self.scores(completions, language)
        rates = {"line_fidelity": found["lpr"]}
        if "wpr" in found:
            rates["word_fidelity"] = found["wpr"]
        return rates

    def line_pass_rate(self, completions: Sequence[str], language: str) -> float:
        """Share of the scored completions whose every line is in ``language`` (1.0 when none is scored)."""
        return self.scores(completions, language)["lpr"]

    def word_pass_rate(self, completions: Sequence[str], language: str) -> float:
        """Among the completions that pass at line level, the share with no English word (1.0 when none passes);
        NaN outside ar, hi, ja, ko, ru, zh, where the reference leaves it out."""
        return self.scores(completions, language).get("wpr", math.nan)
