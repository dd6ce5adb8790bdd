"""ActivationStore: pooled activations per (site, language) on disk, sentence-aligned and resumable.

Layout::

    STORE/meta.json                       format, model identity, pooling, sites, tokenization, languages, ...
    STORE/shards/LANG/00000.safetensors   rows [0, shard_size) of LANG, one tensor per site ('resid.7')

Each shard is computed from its own rows only (batches never cross a shard), written under a temporary name
and renamed, and never rewritten. An interrupted capture therefore resumes by computing the missing shards
and ends bit-for-bit equal to an uninterrupted one. A store is read through the
:class:`~probes.analysis.activations.Activations` interface (memory-mapped reads, one tensor at a time).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes import __version__
from probes.analysis.activations import Activations, ActivationsError
from probes.capture.pooled import capture
from probes.capture.pooling import check_pooling
from probes.capture.progress import Progress, progress_bar
from probes.capture.record import check_sites
from probes.capture.tokenization import Tokenization
from probes.data import ParallelCorpus
from probes.data.files import atomic_path, write_text
from probes.model.identity import identity_mismatches, model_identity
from probes.model.sites import Site

META = "meta.json"
FORMAT = 2  # meta.json layout; a store of another format is refused
# Keys whose values must agree between a store and a capture that writes into it.
_MUST_MATCH = ("pooling", "sites", "shard_size", "tokenization")


class StoreError(ActivationsError):
    """A store that is missing, incomplete, or does not match what it is combined with."""


class ActivationStore(Activations):
    """A finished or partial store on disk. Open with ``ActivationStore(path)``; read like :class:`Activations`."""

    Error = StoreError

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / META).is_file():
            raise StoreError(f"{self.path} is not an activation store (no {META}); create one with `xlalign capture`")
        found = self.meta.get("format", 1)
        if found != FORMAT:
            raise StoreError(
                f"{self.path} was written by xlalign {self.meta.get('version', '< 0.2')} in store format {found}; "
                f"this xlalign ({__version__}) reads format {FORMAT}: capture it again into a new directory"
            )

    @cached_property
    def meta(self) -> dict:
        """The store's metadata, read once per opened store."""
        return json.loads((self.path / META).read_text())

    @property
    def sites(self) -> list[Site]:
        return [Site.parse(text) for text in self.meta["sites"]]

    @property
    def languages(self) -> list[str]:
        return list(self.meta["languages"])

    @property
    def model(self) -> dict:
        return self.meta["model"]

    @property
    def pooling(self) -> str:
        return self.meta["pooling"]

    @property
    def ids(self) -> None:
        return None

    def __len__(self) -> int:
        counts = {info["n"] for info in self.meta["languages"].values()}
        return counts.pop() if len(counts) == 1 else 0

    def where(self) -> str:
        return str(self.path)

    def _load(self, site: Site, language: str) -> Tensor:
        missing = self.missing_shards(language)
        if missing:
            raise StoreError(
                f"{self.path}: language {language!r} is incomplete (shards {missing} missing); "
                "rerun the same capture command to resume"
            )
        parts = []
        for index in range(_n_shards(self.meta["languages"][language]["n"], self.meta["shard_size"])):
            with safe_open(self.shard(language, index), framework="pt") as shard:
                parts.append(shard.get_tensor(str(site)))
        return torch.cat(parts)

    def missing_shards(self, language: str) -> list[int]:
        n = _n_shards(self.meta["languages"][language]["n"], self.meta["shard_size"])
        return [index for index in range(n) if not self.shard(language, index).is_file()]

    def shard(self, language: str, index: int) -> Path:
        return self.path / "shards" / language / f"{index:05d}.safetensors"


def _n_shards(n_rows: int, shard_size: int) -> int:
    return -(-n_rows // shard_size)


def capture_to_store(
    model,
    tokenizer,
    corpus: ParallelCorpus,
    sites: Sequence[Site],
    out: str | os.PathLike,
    *,
    pooling: str = "mean",
    languages: Sequence[str] | None = None,
    shard_size: int = 256,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> ActivationStore:
    """Capture pooled ``sites`` for every language of ``corpus`` into the store at ``out``.

    Creates the store, or resumes one made by the same command: only missing shards are computed. A store
    made with another model (weights and dtype included), pooling, site list, tokenisation or corpus text is a
    :class:`StoreError` naming what differs.
    """
    out = Path(out)
    check_pooling(pooling)
    chosen = check_sites(sites)
    languages = list(languages or corpus.languages)
    settings = {
        "pooling": pooling,
        "sites": [str(site) for site in chosen],
        "shard_size": shard_size,
        "tokenization": tokenization.as_dict(),
    }
    wanted = {lang: {"n": len(corpus), "fingerprint": corpus.fingerprint([lang])} for lang in languages}
    _open_or_create(out, settings, model_identity(model), wanted, corpus.name)
    store = ActivationStore(out)
    todo = {lang: store.missing_shards(lang) for lang in languages}
    with progress_bar(progress, "capture") as bar:
        for lang, shards in todo.items():
            texts = corpus.texts(lang)
            for index in shards:
                bar.set_description(f"capture {lang} (shard {index + 1}/{_n_shards(len(texts), shard_size)})")
                rows = slice(index * shard_size, min((index + 1) * shard_size, len(texts)))
                pooled = capture(model, tokenizer, texts[rows], chosen, pooling=pooling, tokenization=tokenization,
                                 progress=bar)  # fmt: skip
                _write_shard(store.shard(lang, index), pooled)
    return store


def _open_or_create(out: Path, settings: dict, identity: dict, wanted: dict, corpus_name: str) -> None:
    """Check an existing store against ``settings`` (or create it) and register the wanted languages."""
    if (out / META).is_file():
        meta = ActivationStore(out).meta
        problems = [f"model {line}" for line in identity_mismatches(meta["model"], identity, exact=True)]
        problems += [f"{key}: store has {meta.get(key)!r}, this capture has {settings[key]!r}"
                     for key in _MUST_MATCH if meta.get(key) != settings[key]]  # fmt: skip
        for lang, info in wanted.items():
            known = meta["languages"].get(lang)
            if known is not None and known != info:
                problems.append(
                    f"language {lang!r}: the store holds a different corpus text "
                    f"({known['n']} sentences, fingerprint {known['fingerprint'][:12]}) than this capture "
                    f"({info['n']} sentences, fingerprint {info['fingerprint'][:12]})"
                )
        if problems:
            raise StoreError(
                f"{out} was made by a different capture:\n  " + "\n  ".join(problems)
                + "\nUse a new --out directory, or repeat the original command to resume it."
            )
    else:
        if out.exists() and any(out.iterdir()):
            raise StoreError(f"{out} exists and is not an activation store; choose an empty or new directory")
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": __version__, "model": identity, **settings, "languages": {},
                "corpus": corpus_name}  # fmt: skip
    meta["languages"] = {**meta["languages"], **wanted}
    write_text(out / META, json.dumps(meta, indent=2))


def _write_shard(path: Path, pooled: dict[Site, Tensor]) -> None:
    tensors = {str(site): tensor.contiguous() for site, tensor in pooled.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary)
