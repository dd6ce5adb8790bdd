"""Corpus readers: TSV, JSONL, NTREX-128, FLORES-200 / FLORES+, Hugging Face datasets, the bundled demo corpus.

:func:`load_corpus` picks the reader from a spec. Errors name the file, the 1-based line and the language.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path

from probes.data.codes import CorpusError, normalize_language
from probes.data.corpus import ParallelCorpus


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file (BOM and CR/LF tolerated), split on '\\n' only so that no stray character
    (form feed, U+2028, lone CR) can shift the alignment."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise CorpusError(f"{path}, line {line}: not valid UTF-8 ({err.reason}); re-save it as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_sentences(path: Path, what: str) -> list[str]:
    """One stripped, non-empty text per line; ``what`` names the contents in errors (e.g. "language 'deu'")."""
    sentences = [line.strip() for line in _read_lines(path)]
    for number, sentence in enumerate(sentences, start=1):
        if not sentence:
            raise CorpusError(
                f"{path}, line {number}: empty line ({what}); every line must hold one entry, "
                "line-aligned with the other files"
            )
    return sentences


def _read_aligned(files: Mapping[str, Path]) -> dict[str, list[str]]:
    """Read one file per language and check that all have the same number of lines as the first."""
    texts: dict[str, list[str]] = {}
    first_language = next(iter(files))
    for language, path in files.items():
        texts[language] = _read_sentences(path, f"language {language!r}")
        expected, actual = len(texts[first_language]), len(texts[language])
        if actual != expected:
            raise CorpusError(
                f"{path} has {actual} lines but {files[first_language]} has {expected}: parallel files must be "
                f"line-aligned (one sentence per line, same order); fix or remove {path.name}"
            )
    return texts


def _language_columns(names: Sequence[str], where: str) -> list[str]:
    """Normalise language column names (TSV header, JSONL keys); errors name the column and its duplicate."""
    languages: list[str] = []
    for name in names:
        try:
            language = normalize_language(name)
        except CorpusError as err:
            raise CorpusError(f"{where}: {err}") from None
        if language in languages:
            other = names[languages.index(language)]
            raise CorpusError(f"{where}: columns {other!r} and {name!r} are both language {language!r}; keep one")
        languages.append(language)
    if not languages:
        raise CorpusError(f"{where}: no language columns; expected language codes such as 'eng', 'deu'")
    return languages


def _english_first(languages: Mapping[str, Path]) -> dict[str, Path]:
    return {language: languages[language] for language in sorted(languages, key=lambda lang: (lang != "eng", lang))}


def _build(
    source: object, ids: Sequence[str], texts: Mapping[str, Sequence[str]], documents: Sequence[str] | None, name: str
) -> ParallelCorpus:
    """Construct the corpus, prefixing validation errors with the file or dataset they came from."""
    try:
        return ParallelCorpus(tuple(ids), texts, None if documents is None else tuple(documents), name)
    except CorpusError as err:
        raise CorpusError(f"{source}: {err}") from None


def read_tsv(path: str | os.PathLike) -> ParallelCorpus:
    """Read a tab-separated file: a header row of language codes plus optional ``id`` and ``doc`` columns,
    then one sentence per row. Without an ``id`` column, ids are ``'1'``, ``'2'``, ... (row numbers)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise CorpusError(
            f"{path} is empty; expected a header row ('id', 'doc', language codes) and one row per sentence"
        )
    header = [name.strip() for name in lines[0].split("\t")]
    special: dict[str, int] = {}
    for column, name in enumerate(header):
        if name.lower() in ("id", "doc"):
            if name.lower() in special:
                raise CorpusError(f"{path}, line 1: column {name!r} appears twice; keep one")
            special[name.lower()] = column
    language_columns = [column for column in range(len(header)) if column not in special.values()]
    languages = _language_columns([header[column] for column in language_columns], f"{path}, line 1 (header)")
    ids: list[str] = []
    documents: list[str] | None = [] if "doc" in special else None
    texts: dict[str, list[str]] = {language: [] for language in languages}
    for number, line in enumerate(lines[1:], start=2):
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != len(header):
            raise CorpusError(
                f"{path}, line {number}: expected {len(header)} tab-separated fields (as in the header), "
                f"found {len(fields)}; check for a missing field or a tab inside a text"
            )
        for column, value in enumerate(fields):
            if not value:
                label = header[column] if column in special.values() else f"language {header[column]!r}"
                raise CorpusError(f"{path}, line {number}: empty field for {label}; fill it in or remove the row")
        ids.append(fields[special["id"]] if "id" in special else str(number - 1))
        if documents is not None:
            documents.append(fields[special["doc"]])
        for language, column in zip(languages, language_columns):
            texts[language].append(fields[column])
    return _build(path, ids, texts, documents, path.stem)


def read_jsonl(path: str | os.PathLike) -> ParallelCorpus:
    """Read JSON lines ``{"id": ..., "doc": ..., "eng": "...", "deu": "..."}`` (``id`` and ``doc`` optional).

    Every line must have the same keys. Blank lines are skipped; without ``id``, ids are record numbers.
    """
    path = Path(path)
    records: list[tuple[int, dict]] = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}, line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise CorpusError(f"{path} holds no records; expected one JSON object per line")
    keys = list(records[0][1])
    language_keys = [key for key in keys if key not in ("id", "doc")]
    languages = _language_columns(language_keys, f"{path}, line {records[0][0]}")
    ids: list[str] = []
    documents: list[str] | None = [] if "doc" in keys else None
    texts: dict[str, list[str]] = {language: [] for language in languages}
    for row, (number, record) in enumerate(records, start=1):
        missing, extra = set(keys) - set(record), set(record) - set(keys)
        if missing or extra:
            raise CorpusError(
                f"{path}, line {number}: keys differ from line {records[0][0]}: "
                f"missing {sorted(missing)}, extra {sorted(extra)}; every line needs the same keys"
            )
        ids.append(_jsonl_field(record, "id", path, number) if "id" in record else str(row))
        if documents is not None:
            documents.append(_jsonl_field(record, "doc", path, number))
        for language, key in zip(languages, language_keys):
            texts[language].append(_jsonl_field(record, key, path, number))
    return _build(path, ids, texts, documents, path.stem)


def _jsonl_field(record: dict, key: str, path: Path, number: int) -> str:
    value = record[key]
    if key in ("id", "doc") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        what = repr(key) if key in ("id", "doc") else f"language {key!r}"
        raise CorpusError(f"{path}, line {number}: {what} is {value!r}; expected a non-empty string")
    return value.strip()


NTREX_SOURCE = "newstest2019-src.eng.txt"
_NTREX_REF = re.compile(r"newstest2019-ref\.(.+)\.txt")


def read_ntrex(root: str | os.PathLike) -> ParallelCorpus:
    """Read an NTREX-128 checkout (the directory holding ``NTREX-128/``) or the ``NTREX-128`` directory itself.

    Ids are ``'ntrex-1'``, ...; documents come from ``DOCUMENT_IDS.tsv`` (one id per line) when present.
    """
    root = Path(root)
    data_dir = root / "NTREX-128" if (root / "NTREX-128").is_dir() else root
    source = data_dir / NTREX_SOURCE
    if not source.is_file():
        raise CorpusError(
            f"{root} is not an NTREX checkout: {source} not found; pass the directory holding NTREX-128/ "
            "(or NTREX-128/ itself)"
        )
    files = {"eng": source}
    for path in sorted(data_dir.iterdir()):
        match = _NTREX_REF.fullmatch(path.name)
        if match:
            _add_language_file(files, match.group(1), path)
    texts = _read_aligned(_english_first(files))
    checkout = root.parent if data_dir == root and root.name == "NTREX-128" else root
    documents = _ntrex_documents(checkout / "DOCUMENT_IDS.tsv", source, len(texts["eng"]))
    ids = [f"ntrex-{row}" for row in range(1, len(texts["eng"]) + 1)]
    return _build(root, ids, texts, documents, "ntrex")


def _add_language_file(files: dict[str, Path], code: str, path: Path) -> None:
    try:
        language = normalize_language(code)
    except CorpusError as err:
        raise CorpusError(f"{path}: {err}; rename or remove the file") from None
    if language in files:
        raise CorpusError(f"{files[language]} and {path} are both language {language!r}; remove one")
    files[language] = path


def _ntrex_documents(path: Path, source: Path, n: int) -> list[str] | None:
    if not path.is_file():
        return None
    documents = _read_sentences(path, "document ids")
    if len(documents) != n:
        raise CorpusError(
            f"{path} has {len(documents)} lines but {source} has {n}: DOCUMENT_IDS.tsv needs one document id per "
            "sentence; use the file from the same NTREX checkout"
        )
    return documents


_FLORES_CODE = re.compile(r"[A-Za-z]{2,3}_[A-Za-z]{4}")


def read_flores(root: str | os.PathLike, split: str = "devtest") -> ParallelCorpus:
    """Read a FLORES-200 or FLORES+ directory.

    Looks in ``root/split/`` when it exists, else in ``root``, for ``eng_Latn.devtest`` (FLORES-200),
    ``devtest.eng_Latn`` (FLORES+ releases) or, inside a directory named after the split, ``eng_Latn``.
    Ids are ``'flores-devtest-1'``, ...
    """
    root = Path(root)
    files = _flores_files(root, split)
    if not files:
        raise CorpusError(
            f"no FLORES {split!r} files in {root}: expected files like {split}/eng_Latn.{split}, "
            f"{split}/{split}.eng_Latn, {split}/eng_Latn or eng_Latn.{split}; for the dev set pass split='dev'"
        )
    texts = _read_aligned(_english_first(files))
    ids = [f"flores-{split}-{row}" for row in range(1, len(next(iter(texts.values()))) + 1)]
    return _build(root, ids, texts, None, f"flores-{split}")


def _flores_files(root: Path, split: str) -> dict[str, Path]:
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        code = _flores_code(path.name, split, bare_ok=folder.name == split)
        if code is not None and path.is_file():
            _add_language_file(files, code, path)
    return files


def _flores_code(name: str, split: str, bare_ok: bool) -> str | None:
    if name.endswith(f".{split}"):
        code = name.removesuffix(f".{split}")
    elif name.startswith(f"{split}."):
        code = name.removeprefix(f"{split}.")
    elif bare_ok:
        code = name
    else:
        return None
    return code if _FLORES_CODE.fullmatch(code) else None


def read_hf(dataset: str, *, split: str, langs: Sequence[str], config: str | None = None) -> ParallelCorpus:
    """Read a Hugging Face dataset (needs ``datasets`` and network access or a local cache).

    Each language is a column named ``lang`` or ``sentence_<lang>`` (``facebook/flores``), or a key of a
    ``translation`` column (WMT style). Ids come from an ``id`` column when there is one.
    """
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(
            "read_hf needs the 'datasets' package: pip install datasets (or export the data to TSV/JSONL "
            "and use read_tsv / read_jsonl)"
        ) from err
    table = datasets.load_dataset(dataset, config, split=split)
    source = f"{dataset}[{config or 'default'}:{split}]"
    texts = {lang: _hf_texts(table, lang, source) for lang in langs}
    if "id" in table.column_names:
        ids = [str(value) for value in table["id"]]
    else:
        ids = [str(row) for row in range(1, table.num_rows + 1)]
    return _build(source, ids, texts, None, source)


def _hf_texts(table, lang: str, source: str) -> list[str]:
    for column in (lang, f"sentence_{lang}"):
        if column in table.column_names:
            return [text.strip() for text in table[column]]
    if "translation" in table.column_names and table.num_rows and lang in table[0]["translation"]:
        return [pair[lang].strip() for pair in table["translation"]]
    raise CorpusError(
        f"{source}: no column for language {lang!r} (looked for {lang!r}, 'sentence_{lang}' and "
        f"'translation'); columns: {', '.join(table.column_names)}"
    )


def demo_corpus() -> ParallelCorpus:
    """The bundled demo corpus (``probes/data/demo.tsv``)."""
    with resources.as_file(resources.files("probes.data").joinpath("demo.tsv")) as path:
        return replace(read_tsv(path), name="demo")


def load_corpus(
    spec: str | os.PathLike, *, langs: Sequence[str] | None = None, max_sentences: int | None = None
) -> ParallelCorpus:
    """Load ``'demo'``, a ``.tsv`` / ``.jsonl`` file, or an NTREX or FLORES directory, then keep ``langs``
    (all when ``None``) and the first ``max_sentences`` sentences (all when ``None``)."""
    return _open(spec).subset(langs, max_sentences)


def _open(spec: str | os.PathLike) -> ParallelCorpus:
    if spec == "demo":
        return demo_corpus()
    if isinstance(spec, str) and spec.startswith("hf:"):
        raise CorpusError(
            f"{spec!r}: a Hugging Face dataset needs a split and languages; call "
            "read_hf(NAME, split=..., langs=[...], config=...) instead of load_corpus"
        )
    path = Path(spec)
    expected = "expected 'demo', a .tsv or .jsonl file, an NTREX checkout or a FLORES directory"
    if path.is_dir():
        return _open_directory(path)
    if not path.exists():
        raise CorpusError(f"no such file or directory: {path}; {expected}")
    readers = {".tsv": read_tsv, ".jsonl": read_jsonl}
    if path.suffix.lower() not in readers:
        raise CorpusError(f"{path}: unsupported file type {path.suffix!r}; {expected}")
    return readers[path.suffix.lower()](path)


def _open_directory(path: Path) -> ParallelCorpus:
    if (path / "NTREX-128").is_dir() or (path / NTREX_SOURCE).is_file():
        return read_ntrex(path)
    for split in ("devtest", "dev"):
        if (path / split).is_dir() or _flores_files(path, split):
            return read_flores(path, split=split)
    raise CorpusError(
        f"{path} is neither an NTREX checkout (NTREX-128/ or {NTREX_SOURCE}) nor a FLORES directory "
        "(devtest/ or dev/, or files like eng_Latn.devtest); pass the right directory or a .tsv/.jsonl file"
    )
