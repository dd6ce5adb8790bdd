"""Data layer (standard library only): parallel corpora, language codes, readers, atomic files."""

from probes.data.codes import CorpusError, normalize_language
from probes.data.corpus import ParallelCorpus
from probes.data.readers import demo_corpus, load_corpus, read_flores, read_hf, read_jsonl, read_ntrex, read_tsv

__all__ = [
    "CorpusError",
    "ParallelCorpus",
    "demo_corpus",
    "load_corpus",
    "normalize_language",
    "read_flores",
    "read_hf",
    "read_jsonl",
    "read_ntrex",
    "read_tsv",
]
