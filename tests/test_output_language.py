"""Language-confusion metrics (Marchisio et al. 2024): line- and word-level pass rates equal a transcription of
the released compute_metrics rule, and known-language text is scored as such."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ntrex_path
from probes.analysis.output_language import (
    OutputLanguage, OutputLanguageError, identifiable, is_english_word, iso639_1, script, tokens,
)
from probes.data import load_corpus

LANGUAGES = ["eng", "deu", "fra", "rus", "zho-CN", "arb", "hin", "jpn"]


@pytest.fixture(scope="module")
def ntrex():
    return load_corpus(ntrex_path(), langs=LANGUAGES, max_sentences=1200)


@pytest.fixture(scope="module")
def identifier():
    return OutputLanguage(LANGUAGES)


def released_rule(completions: list[str], lang: str, identify) -> dict:
    """for-ai/language-confusion compute_metrics.compute_metrics, with its fastText call replaced by
    ``identify(line)`` (our code or 'unknown'), its tokenizer by ``tokens`` and its word list by
    ``is_english_word``; None where the released code divides by zero (it reports 1.0 there)."""
    with_word_errors = with_line_errors = non_skipped = 0
    for completion in completions:
        completion = completion.split("\nQ:")[0].strip()
        completion = completion.translate(str.maketrans("", "", string.punctuation)).replace("—", " ").replace("،", "")
        lines = completion.split("\n")
        line_tokens = [tokens(line) for line in lines]
        kept = [i for i, t in enumerate(line_tokens) if len(t) >= 5]
        lines, line_tokens = [lines[i] for i in kept], [line_tokens[i] for i in kept]
        if lines:
            non_skipped += 1
            if sum(identify(line) != lang for line in lines) > 0:
                with_line_errors += 1
            elif any(is_english_word(token.strip()) for t in line_tokens for token in t):
                with_word_errors += 1
    lpr = 1 - with_line_errors / non_skipped if non_skipped else None
    passing = non_skipped - with_line_errors
    wpr = 1 - with_word_errors / passing if passing else None
    return {"lpr": lpr, "wpr": wpr if script(lang) != "Latn" else None}


def nan_to_none(value: float):
    return None if math.isnan(value) else value


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pass_rates_equal_the_released_rule(ntrex, identifier, data):
    """Completions built of NTREX lines of random languages, cut short, with English words and a trailing
    'Q:' turn, score as the released rule scores them."""
    lang = data.draw(st.sampled_from(LANGUAGES[1:]))
    completions = []
    for _ in range(data.draw(st.integers(1, 6))):
        lines = []
        for _ in range(data.draw(st.integers(1, 3))):
            source = data.draw(st.sampled_from([lang, lang, "eng", "deu"]))
            text = ntrex.texts(source)[data.draw(st.integers(0, 1199))]
            words = text.split()
            text = " ".join(words[: data.draw(st.integers(1, len(words)))]) if " " in text else text[: data.draw(
                st.integers(1, len(text)))]
            if data.draw(st.booleans()):
                text += " " + data.draw(st.sampled_from(["house", "the", "Google", "because", "über"]))
            lines.append(text)
        completion = "\n".join(lines)
        if data.draw(st.booleans()):
            completion += "\nQ: " + ntrex.texts(lang)[0]
        completions.append(completion)
    expected = released_rule(completions, lang, lambda line: identifier.identify([line])[0])
    assert nan_to_none(identifier.line_pass_rate(completions, lang)) == pytest.approx(expected["lpr"])
    assert nan_to_none(identifier.word_pass_rate(completions, lang)) == pytest.approx(expected["wpr"])


def test_known_language_text_is_scored_as_its_language(ntrex, identifier):
    held_out = slice(1000, 1200)
    for lang in LANGUAGES:
        texts = ntrex.texts(lang)[held_out]
        assert identifier.line_pass_rate(texts, lang) >= 0.95, lang
        if lang != "eng":
            assert identifier.line_pass_rate(ntrex.texts("eng")[held_out], lang) <= 0.02, lang
    german, english = ntrex.texts("deu")[1000], ntrex.texts("eng")[1000]
    assert identifier.line_pass_rate([german + "\n" + english], "deu") == 0, "one English line fails the completion"
    russian = ntrex.texts("rus")[1001]
    assert identifier.line_pass_rate([russian + " because"], "rus") == 1
    assert identifier.word_pass_rate([russian + " because"], "rus") == 0, "an English word fails at word level"
    assert identifier.word_pass_rate([russian + " Google"], "rus") == 1, "a capitalised name is not an English word"
    assert math.isnan(identifier.word_pass_rate([german], "deu")), "no word level for Latin-script languages"
    assert math.isnan(identifier.line_pass_rate(["zu kurz"], "deu")), "nothing scored: no line of 5 tokens"


def test_one_identifier_narrowed_to_some_languages_leaves_the_others_identifiable():
    assert OutputLanguage(["eng", "deu"]).identify(["Das ist ein schöner Tag heute"]) == ["deu"]
    assert identifiable("fra") and OutputLanguage(["fra", "eng"]).identify(["C'est une belle journée"]) == ["fra"]
    assert OutputLanguage(None).identify(["C'est une belle journée aujourd'hui"]) == ["fr"]


def test_codes_and_errors():
    assert [iso639_1(code) for code in ("arb", "zho-CN", "eng-GB", "fra-CA")] == ["ar", "zh", "en", "fr"]
    assert tokens("猫は寝ています and dogs") == ["猫", "は", "寝", "て", "い", "ま", "す", "and", "dogs"]
    with pytest.raises(OutputLanguageError, match="'xyz'"):
        OutputLanguage(["eng", "xyz"])
    with pytest.raises(OutputLanguageError, match="not among the candidates"):
        OutputLanguage(["eng", "deu"]).line_pass_rate(["Кошка спит на диване, а собака играет."], "rus")
