"""Which language generated text is in, and the language-confusion metrics of Marchisio et al. 2024.

"Understanding and Mitigating Language Confusion in LLMs" (code for-ai/language-confusion, compute_metrics.py)
scores completions expected in language ``l``:

- **line-level pass rate** (LPR): the share of completions every line of which is identified as ``l``. A
  completion is normalised first (cut at ``"\\nQ:"``, ASCII punctuation, ``—`` and ``،`` removed), split into
  lines, and lines of fewer than 5 tokens are dropped; a completion left with no line is skipped. A line's
  language is the identifier's best guess if its confidence exceeds 0.3, else ``unknown``.
- **word-level pass rate** (WPR), for languages not written in Latin script only: among the completions that
  pass at line level, the share containing no English word (a lowercase token longer than 3 letters found in
  an English lexicon).

Differences from the released code, each forced by this package working offline and without extra
segmenters: the identifier is py3langid (langid.py's model; fastText's lid.176 is a download), by default
restricted to the languages being compared (its confusions between close varieties, e.g. Indonesian/Malay,
Mandarin/Wu, would otherwise count as errors; pass ``candidates=None`` for every language it knows); a
token is a whitespace-separated word, or one character of a script written without spaces (Han, kana), as no
Chinese or Japanese segmenter is installed; the English lexicon is wordfreq's (words with a Zipf frequency of
at least 3, i.e. once per million words) instead of a Unix word list.
"""

from __future__ import annotations

import functools
import math
import re
import string
from typing import Iterable, Sequence

import langcodes

THRESHOLD = 0.3  # the released code's fastText confidence bar
MIN_TOKENS = 5
LATIN_SCRIPT = {"Latn"}
_PUNCTUATION = str.maketrans("", "", string.punctuation + "—،")
_UNSPACED = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han: no spaces between words
_TOKEN = re.compile(rf"[{_UNSPACED}]|[^\s{_UNSPACED}]+")


class OutputLanguageError(ValueError):
    """A language the identifier does not know."""


def iso639_1(language: str) -> str:
    """py3langid's code of one of ours (``"arb"`` -> ``"ar"``, ``"zho-CN"`` -> ``"zh"``, ``"eng-GB"`` -> ``"en"``)."""
    return langcodes.Language.get(langcodes.standardize_tag(language, macro=True)).language


def script(language: str) -> str:
    """ISO 15924 script ``language`` is usually written in (``"Latn"``, ``"Cyrl"``, ``"Hans"``, ...)."""
    return langcodes.Language.get(language).maximize().script


@functools.lru_cache(maxsize=1)
def _model():
    """py3langid's identifier and every language it knows (``set_languages`` narrows the identifier in place)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return identifier, frozenset(identifier.nb_classes)


def identifiable(language: str) -> bool:
    """Whether py3langid identifies ``language`` (one of our codes)."""
    return iso639_1(language) in _model()[1]


def normalise(completion: str) -> str:
    return completion.split("\nQ:")[0].strip().translate(_PUNCTUATION)


def tokens(line: str) -> list[str]:
    return _TOKEN.findall(line)


class OutputLanguage:
    """Identify the language of lines of text among ``candidates`` (our codes; ``None``: every language
    py3langid knows) and score completions with the line- and word-level pass rates."""

    def __init__(self, candidates: Sequence[str] | None = None, *, threshold: float = THRESHOLD,
                 min_tokens: int = MIN_TOKENS) -> None:  # fmt: skip
        self.threshold = threshold
        self.min_tokens = min_tokens
        self._ours: dict[str, str] = {}
        if candidates is not None:
            for language in candidates:
                if not identifiable(language):
                    raise OutputLanguageError(f"language {language!r} ({iso639_1(language)}) is not one py3langid "
                                              f"identifies")  # fmt: skip
                self._ours.setdefault(iso639_1(language), language)
        self._codes = sorted(self._ours) if candidates is not None else None

    def knows(self, language: str) -> bool:
        """Whether ``language`` can be identified (is py3langid's and, with candidates, among them)."""
        return iso639_1(language) in self._ours if self._codes is not None else identifiable(language)

    def pass_rates(self, completions: Sequence[str], language: str) -> dict[str, float]:
        """``line_fidelity`` and, for a script other than Latin, ``word_fidelity`` of ``completions`` (each line
        identified once for both)."""
        judged = self._judged(completions, language)
        rates = {"line_fidelity": _line_rate(judged)}
        if script(language) not in LATIN_SCRIPT:
            rates["word_fidelity"] = _word_rate(judged)
        return rates

    def identify(self, lines: Iterable[str]) -> list[str]:
        """Per line: the language (one of ``candidates`` when given, else an ISO 639-1 code) or ``unknown``."""
        model = _model()[0]
        model.set_languages(self._codes)
        out = []
        for line in lines:
            code, confidence = model.classify(line)
            out.append(self._ours.get(code, code) if confidence > self.threshold else "unknown")
        return out

    def _lines(self, completion: str) -> list[str]:
        return [line for line in normalise(completion).split("\n") if len(tokens(line)) >= self.min_tokens]

    def _judged(self, completions: Sequence[str], language: str) -> list[tuple[list[str], bool]]:
        """The scored completions (those with a line of ``min_tokens`` tokens): their lines, and whether every
        line is identified as ``language``."""
        code = iso639_1(language)
        if self._codes is not None and code not in self._ours:
            raise OutputLanguageError(f"language {language!r} is not among the candidates {sorted(self._ours.values())}")
        wanted = self._ours.get(code, code)
        scored = [lines for lines in map(self._lines, completions) if lines]
        return [(lines, all(found == wanted for found in self.identify(lines))) for lines in scored]

    def line_pass_rate(self, completions: Sequence[str], language: str) -> float:
        """Share of the scored completions whose every line is in ``language`` (NaN when none is scored:
        every completion had no line of ``min_tokens`` tokens)."""
        return _line_rate(self._judged(completions, language))

    def word_pass_rate(self, completions: Sequence[str], language: str) -> float:
        """Among the completions that pass at line level, the share with no English word; NaN for a language
        written in Latin script (the released code leaves it out: English words cannot be told apart there)
        and when no completion passes at line level."""
        if script(language) in LATIN_SCRIPT:
            return math.nan
        return _word_rate(self._judged(completions, language))


def _line_rate(judged: list[tuple[list[str], bool]]) -> float:
    return sum(passes for _, passes in judged) / len(judged) if judged else math.nan


def _word_rate(judged: list[tuple[list[str], bool]]) -> float:
    clean = [not any(is_english_word(token) for line in lines for token in tokens(line)) for lines, passes in judged
             if passes]  # fmt: skip
    return sum(clean) / len(clean) if clean else math.nan


@functools.lru_cache(maxsize=2**16)
def is_english_word(token: str) -> bool:
    """A lowercase Latin token longer than 3 letters that English uses at least once per million words."""
    from wordfreq import zipf_frequency

    return len(token) > 3 and token.isascii() and token.isalpha() and token.islower() and zipf_frequency(token, "en") >= 3.0
