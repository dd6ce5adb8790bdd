"""Language-confusion metrics (Marchisio et al. 2024): known-language text is scored as such, the restricted
identifier is an explicit option, codes and errors. The transcription of the released compute_metrics.py is
tests/test_fidelity_confusion.py."""

from __future__ import annotations

import math

import pytest

from conftest import ntrex_path
from probes.analysis.output_language import OutputLanguage, OutputLanguageError, identifiable, iso639_1, tokens
from probes.analysis.lid import IdentifierError
from probes.data import load_corpus

LANGUAGES = ["eng", "deu", "fra", "rus", "zho-CN", "arb", "hin", "jpn"]


@pytest.fixture(scope="module")
def ntrex():
    return load_corpus(ntrex_path(), langs=LANGUAGES, max_sentences=1200)


@pytest.fixture(scope="module")
def identifier():
    return OutputLanguage()


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
    assert identifier.line_pass_rate(["zu kurz"], "deu") == 1.0, "nothing scored: 1.0, as the reference"


def test_one_identifier_narrowed_to_some_languages_leaves_the_others_identifiable():
    for identifier in ("lid176", "py3langid"):
        narrowed = OutputLanguage(["eng", "deu"], identifier=identifier)
        assert narrowed.identify(["Das ist ein schöner Tag heute"]) == ["deu"]
        assert OutputLanguage(["fra", "eng"], identifier=identifier).identify(["C'est une belle journée"]) == ["fra"]
        assert OutputLanguage(identifier=identifier).identify(["C'est une belle journée aujourd'hui"]) == ["fr"]
    assert identifiable("fra") and identifiable("ceb") and not identifiable("ceb", "py3langid")


def test_codes_and_errors():
    assert [iso639_1(code) for code in ("arb", "zho-CN", "eng-GB", "fra-CA")] == ["ar", "zh", "en", "fr"]
    assert tokens("猫は寝ています and dogs", "jpn") == ["猫", "は", "寝", "て", "い", "ます", "and", "dogs"]
    assert tokens("猫は寝ています and dogs", "deu") == ["猫は寝ています", "and", "dogs"]
    with pytest.raises(OutputLanguageError, match="'xyz'"):
        OutputLanguage(["eng", "xyz"])
    with pytest.raises(OutputLanguageError, match="not among the candidates"):
        OutputLanguage(["eng", "deu"]).line_pass_rate(["Кошка спит на диване, а собака играет."], "rus")
    with pytest.raises(IdentifierError, match="unknown identifier 'fasttext'"):
        OutputLanguage(identifier="fasttext")
