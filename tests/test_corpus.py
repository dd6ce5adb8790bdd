"""ParallelCorpus and its readers, on the real NTREX copy (conftest.NTREX) and on small files in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import NTREX
from probes.data import (
    CorpusError,
    ParallelCorpus,
    demo_corpus,
    load_corpus,
    normalize_language,
    read_flores,
    read_jsonl,
    read_ntrex,
    read_tsv,
)

REPO = Path(__file__).resolve().parents[1]
NTREX_ROOT = NTREX
NTREX_LANGUAGES = (
    "eng deu fra spa ita por rus zho-CN jpn kor arb hin swa ind fin heb ell tam yor amh kaz nld ces fas".split()
)


@pytest.fixture(scope="module")
def ntrex() -> ParallelCorpus:
    return read_ntrex(NTREX_ROOT)


def small_corpus(documents: list[str] | None = None, n: int = 10) -> ParallelCorpus:
    return ParallelCorpus(
        ids=[f"s{i}" for i in range(n)],
        texts_by_language={"eng": [f"sentence {i}" for i in range(n)], "fra": [f"phrase {i}" for i in range(n)]},
        documents=documents,
        name="small",
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_ntrex(root: Path, files: dict[str, str]) -> Path:
    """A flat NTREX-like directory; keys are language codes ('eng' is the source file)."""
    for lang, text in files.items():
        name = "newstest2019-src.eng.txt" if lang == "eng" else f"newstest2019-ref.{lang}.txt"
        write(root / name, text)
    return root


# ---------------------------------------------------------------------------------------------------------
# NTREX on the real data


def test_ntrex_reads_every_language_and_sentence(ntrex):
    assert len(ntrex) == 1501
    assert sorted(ntrex.languages) == sorted(NTREX_LANGUAGES)
    assert ntrex.languages[0] == "eng"
    assert ntrex.ids[0] == "ntrex-1" and ntrex.ids[-1] == "ntrex-1501"
    assert ntrex.name == "ntrex"
    assert all(len(ntrex.texts(lang)) == 1501 for lang in ntrex.languages)


def test_ntrex_texts_match_the_files_read_directly(ntrex):
    data = NTREX_ROOT / "NTREX-128"
    german = (data / "newstest2019-ref.deu.txt").read_text(encoding="utf-8").splitlines()
    chinese = (data / "newstest2019-ref.zho-CN.txt").read_text(encoding="utf-8").splitlines()
    assert ntrex.texts("deu")[0] == german[0]
    assert ntrex.texts("deu")[-1] == german[-1]
    assert ntrex.texts("zho-CN")[700] == chinese[700]
    assert not any("\r" in text for text in ntrex.texts("deu"))
    assert ntrex.pairs("eng", "deu")[3] == (ntrex.texts("eng")[3], german[3])


def test_ntrex_documents_come_from_document_ids(ntrex):
    lines = (NTREX_ROOT / "DOCUMENT_IDS.tsv").read_text(encoding="utf-8").split()
    assert ntrex.documents is not None
    assert list(ntrex.documents) == lines
    assert 10 < len(set(ntrex.documents)) < 1501


def test_ntrex_subdirectory_reads_the_same_corpus(ntrex):
    inner = read_ntrex(NTREX_ROOT / "NTREX-128")
    assert inner.fingerprint() == ntrex.fingerprint()
    assert inner.documents == ntrex.documents


def test_load_corpus_detects_ntrex_and_subsets(ntrex):
    corpus = load_corpus(NTREX_ROOT, langs=["en", "zh", "deu_Latn"], max_sentences=50)
    assert corpus.languages == ("eng", "zho-CN", "deu")
    assert len(corpus) == 50
    assert corpus.texts("zho-CN") == ntrex.texts("zho-CN")[:50]
    assert corpus.documents == ntrex.documents[:50]


# ---------------------------------------------------------------------------------------------------------
# split, subset, fingerprint


def test_split_respects_documents_and_covers_everything(ntrex):
    train, test = ntrex.split(test_fraction=0.2, seed=0)
    assert set(train.ids).isdisjoint(test.ids)
    assert len(train) + len(test) == len(ntrex)
    assert set(train.ids) | set(test.ids) == set(ntrex.ids)
    assert set(train.documents).isdisjoint(test.documents)
    assert 0.15 < len(test) / len(ntrex) < 0.3
    position = {sentence_id: i for i, sentence_id in enumerate(ntrex.ids)}
    for part in (train, test):
        indices = [position[sentence_id] for sentence_id in part.ids]
        assert indices == sorted(indices)
        assert part.texts("deu") == [ntrex.texts("deu")[i] for i in indices]
        assert part.languages == ntrex.languages


def test_split_is_deterministic_and_seeded(ntrex):
    first = ntrex.split(test_fraction=0.2, seed=3)
    again = ntrex.split(test_fraction=0.2, seed=3)
    other = ntrex.split(test_fraction=0.2, seed=4)
    assert [part.ids for part in first] == [part.ids for part in again]
    assert first[1].ids != other[1].ids


def test_split_by_sentence_without_documents():
    train, test = small_corpus(n=10).split(test_fraction=0.3, seed=1)
    assert (len(train), len(test)) == (7, 3)
    assert sorted(train.ids + test.ids) == sorted(small_corpus(n=10).ids)
    assert train.name == "small:train" and test.name == "small:test"


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(CorpusError, match="test_fraction"):
        small_corpus().split(test_fraction=fraction)


def test_split_needs_two_groups():
    with pytest.raises(CorpusError, match="single document"):
        small_corpus(documents=["d1"] * 10).split()
    train, test = small_corpus(documents=["d1"] * 5 + ["d2"] * 5).split(test_fraction=0.9)
    assert len(train) == 5 and len(test) == 5  # train always keeps a group


def test_subset_selects_languages_and_first_sentences(ntrex):
    part = ntrex.subset(["fra", "eng"], n=5)
    assert part.languages == ("fra", "eng")
    assert part.ids == ntrex.ids[:5]
    assert part.texts("fra") == ntrex.texts("fra")[:5]
    assert len(ntrex.subset(n=10_000)) == len(ntrex)
    with pytest.raises(CorpusError, match="at least 1"):
        ntrex.subset(n=0)
    with pytest.raises(CorpusError, match="list of language codes"):
        ntrex.subset("eng")


def test_unknown_language_lists_available_ones(ntrex):
    with pytest.raises(CorpusError, match="xho.*available: eng amh"):
        ntrex.texts("xho")
    with pytest.raises(CorpusError, match="swe.*available:"):
        ntrex.subset(["eng", "swe"])
    with pytest.raises(CorpusError, match="invalid language code"):
        ntrex.texts("english")


def test_fingerprint_is_stable_and_sensitive():
    corpus = small_corpus()
    texts = {lang: corpus.texts(lang) for lang in corpus.languages}
    assert corpus.fingerprint() == small_corpus().fingerprint()
    assert corpus.fingerprint(["eng", "fra"]) == corpus.fingerprint(["fra", "eng"]) == corpus.fingerprint()
    assert corpus.fingerprint(["eng"]) != corpus.fingerprint(["fra"]) != corpus.fingerprint()
    assert len(corpus.fingerprint()) == 64
    texts["fra"][4] = texts["fra"][4].replace("phrase", "phrasE")
    changed = ParallelCorpus(corpus.ids, texts)
    assert changed.fingerprint() != corpus.fingerprint()
    assert changed.fingerprint(["fra"]) != corpus.fingerprint(["fra"])
    assert changed.fingerprint(["eng"]) == corpus.fingerprint(["eng"])
    renamed = ParallelCorpus(("x0", *corpus.ids[1:]), {lang: corpus.texts(lang) for lang in corpus.languages})
    assert renamed.fingerprint(["eng"]) != corpus.fingerprint(["eng"])


def test_fingerprint_is_the_same_in_another_process(ntrex):
    code = (
        "from probes.data import read_ntrex; import sys; print(read_ntrex(sys.argv[1]).fingerprint(['deu', 'zho-CN']))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    result = subprocess.run([sys.executable, "-c", code, str(NTREX_ROOT)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ntrex.fingerprint(["zho-CN", "deu"])


# ---------------------------------------------------------------------------------------------------------
# ParallelCorpus validation


def test_corpus_normalises_codes_and_is_read_only():
    corpus = ParallelCorpus(["a", "b"], {"eng_Latn": ["one", "two"], "zh": ["一", "二"]})
    assert corpus.languages == ("eng", "zho-CN")
    assert corpus.texts("en") == ["one", "two"]
    with pytest.raises(TypeError):
        corpus.texts_by_language["deu"] = ("x", "y")
    corpus.texts("eng").append("three")
    assert len(corpus.texts("eng")) == 2


def test_corpus_rejects_misaligned_language():
    with pytest.raises(CorpusError, match=r"'fra' has 1 texts but there are 2"):
        ParallelCorpus(["a", "b"], {"eng": ["one", "two"], "fra": ["un"]})


def test_corpus_rejects_empty_text_naming_language_and_id():
    with pytest.raises(CorpusError, match=r"language 'fra', sentence id 'b'"):
        ParallelCorpus(["a", "b"], {"eng": ["one", "two"], "fra": ["un", "  "]})


def test_corpus_rejects_duplicate_ids_and_languages():
    with pytest.raises(CorpusError, match=r"id 'a' is used by sentences 1 and 2"):
        ParallelCorpus(["a", "a"], {"eng": ["one", "two"]})
    with pytest.raises(CorpusError, match=r"'eng' and 'eng_Latn' are both 'eng'"):
        ParallelCorpus(["a"], {"eng": ["one"], "eng_Latn": ["one"]})
    with pytest.raises(CorpusError, match="document ids for 2 sentences"):
        ParallelCorpus(["a", "b"], {"eng": ["one", "two"]}, documents=["d"])
    with pytest.raises(CorpusError, match="empty"):
        ParallelCorpus([], {"eng": []})


# ---------------------------------------------------------------------------------------------------------
# Language codes


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("eng", "eng"),
        ("eng_Latn", "eng"),
        ("deu_Latn", "deu"),
        ("rus_Cyrl", "rus"),
        ("arb_Arab", "arb"),
        ("jpn_Jpan", "jpn"),
        ("kor_Hang", "kor"),
        ("zho_Hans", "zho-CN"),
        ("zho_Hant", "zho-TW"),
        ("cmn_Hans", "zho-CN"),
        ("srp_Latn", "srp-Latn"),
        ("srp_Cyrl", "srp-Cyrl"),
        ("arb_Latn", "arb-Latn"),
        ("ckb_Arab", "ckb-Arab"),
        ("en", "eng"),
        ("de", "deu"),
        ("zh", "zho-CN"),
        ("zh-TW", "zho-TW"),
        ("pt-br", "por-BR"),
        ("zho-cn", "zho-CN"),
        ("srp-latn", "srp-Latn"),
        ("eng-GB", "eng-GB"),
        (" fra ", "fra"),
    ],
)
def test_normalize_language(code, expected):
    assert normalize_language(code) == expected
    assert normalize_language(expected) == expected


@pytest.mark.parametrize("code", ["english", "e", "eng-", "eng_Latin1", "en-US-x", "", "12", "eng Latn", "qq"])
def test_normalize_language_rejects_invalid_codes(code):
    with pytest.raises(CorpusError, match="language code") as info:
        normalize_language(code)
    assert repr(code) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# TSV and JSONL


def test_read_tsv_with_id_doc_bom_and_crlf(tmp_path):
    text = "\ufeffid\tdoc\teng\tfra_Latn\r\nx1\td1\t Hello \tBonjour\r\nx2\td2\tBye\tSalut\r\n"
    path = write(tmp_path / "c.tsv", text)
    corpus = read_tsv(path)
    assert corpus.ids == ("x1", "x2")
    assert corpus.documents == ("d1", "d2")
    assert corpus.languages == ("eng", "fra")
    assert corpus.texts("eng") == ["Hello", "Bye"]
    assert corpus.name == "c"


def test_read_tsv_without_id_numbers_rows(tmp_path):
    corpus = read_tsv(write(tmp_path / "c.tsv", "eng\tdeu\na\tb\nc\td\ne\tf\n"))
    assert corpus.ids == ("1", "2", "3")
    assert corpus.documents is None


def test_read_tsv_wrong_field_count_names_line(tmp_path):
    path = write(tmp_path / "c.tsv", "id\teng\tdeu\n1\ta\tb\n2\tc\n")
    with pytest.raises(CorpusError, match=r"line 3: expected 3 tab-separated fields .*found 2") as info:
        read_tsv(path)
    assert str(path) in str(info.value)


def test_read_tsv_empty_field_names_file_line_and_language(tmp_path):
    path = write(tmp_path / "c.tsv", "eng\tdeu\na\tb\nc\t \n")
    with pytest.raises(CorpusError, match=r"line 3: empty field for language 'deu'") as info:
        read_tsv(path)
    assert str(path) in str(info.value)


def test_read_tsv_duplicate_language_column(tmp_path):
    path = write(tmp_path / "c.tsv", "eng\teng_Latn\na\tb\n")
    with pytest.raises(CorpusError, match=r"line 1.*'eng' and 'eng_Latn' are both language 'eng'"):
        read_tsv(path)


def test_read_tsv_bad_header_and_bad_encoding(tmp_path):
    with pytest.raises(CorpusError, match=r"line 1.*invalid language code 'English'"):
        read_tsv(write(tmp_path / "a.tsv", "id\tEnglish\n1\ta\n"))
    bad = tmp_path / "b.tsv"
    bad.write_bytes(b"eng\tdeu\na\tb\nc\t\xff\n")
    with pytest.raises(CorpusError, match=r"line 3: not valid UTF-8"):
        read_tsv(bad)
    with pytest.raises(CorpusError, match="empty"):
        read_tsv(write(tmp_path / "c.tsv", "eng\tdeu\n"))


def test_read_jsonl(tmp_path):
    lines = [{"id": 7, "doc": "d", "eng": "Hi", "deu": "Hallo"}, {"id": "8", "doc": "d", "eng": "Yes", "deu": "Ja"}]
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n")
    corpus = read_jsonl(path)
    assert corpus.ids == ("7", "8")
    assert corpus.documents == ("d", "d")
    assert corpus.pairs("eng", "deu") == [("Hi", "Hallo"), ("Yes", "Ja")]
    assert load_corpus(path).fingerprint() == corpus.fingerprint()


def test_read_jsonl_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"eng": "a", "deu": "b"}\n{"eng": "c", "deu": }\n')
    with pytest.raises(CorpusError, match=r"line 2: invalid JSON") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_read_jsonl_key_mismatch_names_missing_and_extra(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"eng": "a", "deu": "b"}\n{"eng": "c", "fra": "d"}\n')
    with pytest.raises(CorpusError, match=r"line 2: .*missing \['deu'\], extra \['fra'\]"):
        read_jsonl(path)
    path = write(tmp_path / "d.jsonl", '{"eng": "a", "deu": "b"}\n{"eng": "c", "deu": ""}\n')
    with pytest.raises(CorpusError, match=r"line 2: language 'deu' is ''"):
        read_jsonl(path)


# ---------------------------------------------------------------------------------------------------------
# NTREX and FLORES error paths


def test_ntrex_misaligned_files_name_both_files_and_counts(tmp_path):
    root = write_ntrex(tmp_path, {"eng": "a\nb\nc\n", "deu": "A\nB\nC\n", "fra": "A\nB\n"})
    with pytest.raises(CorpusError) as info:
        read_ntrex(root)
    message = str(info.value)
    assert "newstest2019-ref.fra.txt has 2 lines" in message
    assert "newstest2019-src.eng.txt has 3" in message


def test_ntrex_empty_line_names_file_and_line(tmp_path):
    root = write_ntrex(tmp_path, {"eng": "a\nb\nc\n", "zho-cn": "一\n\n三\n"})
    with pytest.raises(CorpusError, match=r"newstest2019-ref\.zho-cn\.txt, line 2: empty line \(language 'zho-CN'\)"):
        read_ntrex(root)


def test_ntrex_document_ids_must_match(tmp_path):
    root = write_ntrex(tmp_path / "ok", {"eng": "a\nb\n", "deu": "A\nB\n"})
    assert read_ntrex(root).documents is None
    write(root / "DOCUMENT_IDS.tsv", "d1\nd1\n")
    assert read_ntrex(root).documents == ("d1", "d1")
    write(root / "DOCUMENT_IDS.tsv", "d1\n")
    with pytest.raises(CorpusError, match=r"DOCUMENT_IDS.tsv has 1 lines but .* has 2"):
        read_ntrex(root)


def test_read_flores_200_layout(tmp_path):
    write(tmp_path / "devtest" / "eng_Latn.devtest", "Hello\nGood night\n")
    write(tmp_path / "devtest" / "deu_Latn.devtest", "Hallo \r\n\u00a0Gute Nacht\n")
    write(tmp_path / "devtest" / "zho_Hans.devtest", "你好\n晚安\n")
    write(tmp_path / "dev" / "eng_Latn.dev", "Dev only\n")
    write(tmp_path / "metadata_devtest.tsv", "URL\tdomain\n")
    corpus = read_flores(tmp_path)
    assert corpus.languages == ("eng", "deu", "zho-CN")
    assert corpus.texts("deu") == ["Hallo", "Gute Nacht"]
    assert corpus.ids == ("flores-devtest-1", "flores-devtest-2")
    assert read_flores(tmp_path, split="dev").texts("eng") == ["Dev only"]
    assert load_corpus(tmp_path).fingerprint() == corpus.fingerprint()


def test_read_flores_plus_layouts(tmp_path):
    write(tmp_path / "plus" / "devtest" / "devtest.eng_Latn", "Hello\n")
    write(tmp_path / "plus" / "devtest" / "devtest.srp_Cyrl", "Здраво\n")
    write(tmp_path / "bare" / "devtest" / "eng_Latn", "Hello\n")
    write(tmp_path / "bare" / "devtest" / "README", "not a language\n")
    write(tmp_path / "flat" / "eng_Latn.dev", "Hello\n")
    assert read_flores(tmp_path / "plus").languages == ("eng", "srp-Cyrl")
    assert read_flores(tmp_path / "bare").texts("eng") == ["Hello"]
    assert load_corpus(tmp_path / "flat").name == "flores-dev"


def test_read_flores_misaligned_and_missing(tmp_path):
    write(tmp_path / "eng_Latn.devtest", "a\nb\nc\n")
    write(tmp_path / "fra_Latn.devtest", "a\nb\n")
    with pytest.raises(CorpusError, match=r"fra_Latn\.devtest has 2 lines but .*eng_Latn\.devtest has 3"):
        read_flores(tmp_path)
    with pytest.raises(CorpusError, match=r"no FLORES 'dev' files"):
        read_flores(tmp_path, split="dev")


# ---------------------------------------------------------------------------------------------------------
# load_corpus and the demo corpus


def test_load_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file or directory"):
        load_corpus(tmp_path / "missing.tsv")
    with pytest.raises(CorpusError, match="read_hf"):
        load_corpus("hf:facebook/flores:eng_Latn")
    with pytest.raises(CorpusError, match="unsupported file type '.csv'"):
        load_corpus(write(tmp_path / "c.csv", "eng,deu\n"))
    with pytest.raises(CorpusError, match="neither an NTREX checkout"):
        load_corpus(tmp_path)


def dominant_script(texts: list[str]) -> str | None:
    ranges = {
        "Latin": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F)],
        "Greek": [(0x370, 0x3FF)],
        "Cyrillic": [(0x400, 0x4FF)],
        "Hebrew": [(0x590, 0x5FF)],
        "Arabic": [(0x600, 0x6FF)],
        "Devanagari": [(0x900, 0x97F)],
        "Kana": [(0x3040, 0x30FF)],
        "Han": [(0x4E00, 0x9FFF)],
        "Hangul": [(0xAC00, 0xD7AF)],
    }
    counts = Counter(
        script
        for char in "".join(texts)
        for script, spans in ranges.items()
        if any(low <= ord(char) <= high for low, high in spans)
    )
    return counts.most_common(1)[0][0] if counts else None


def test_demo_corpus_is_multilingual_and_multi_script():
    corpus = load_corpus("demo")
    assert corpus.name == "demo"
    assert len(corpus) >= 150
    assert len(corpus.languages) >= 12 and "eng" in corpus.languages
    scripts = {dominant_script(corpus.texts(lang)) for lang in corpus.languages}
    assert {"Latin", "Cyrillic", "Arabic", "Devanagari", "Han", "Hangul"} <= scripts
    assert len(scripts) >= 6
    assert demo_corpus().fingerprint() == corpus.fingerprint()
    assert len(load_corpus("demo", langs=["en", "de"], max_sentences=20)) == 20
