"""ActivationStore: pooled activations per (site, language) on disk, sentence-aligned and resumable.

Layout::

    STORE/meta.json                       model identity, pooling, sites, languages (count + fingerprint), ...
    STORE/shards/LANG/00000.safetensors   rows [0, shard_size) of LANG, one tensor per site ('resid.7')

Each shard is computed from its own rows only (batches never cross a shard), written under a temporary name
and renamed, and never rewritten. An interrupted capture therefore resumes by computing the missing shards
and ends bit-for-bit equal to an uninterrupted one. Reads are memory-mapped (safetensors ``safe_open``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes import __version__
from probes.atomic import atomic_path, write_text
from probes.capture import capture
from probes.corpus import ParallelCorpus
from probes.models import model_identity
from probes.sites import Site

META = "meta.json"
# Keys whose values must agree between a store and a capture that writes into it.
_MUST_MATCH = ("model", "pooling", "sites", "shard_size", "max_length", "exclude_bos", "padding_side")


class StoreError(ValueError):
    """A store that is missing, incomplete, or does not match what it is combined with."""


@dataclass(frozen=True)
class ActivationStore:
    """A finished or partial store on disk. Open with ``ActivationStore(path)``."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not (self.path / META).is_file():
            raise StoreError(f"{self.path} is not an activation store (no {META}); create one with `xlalign capture`")

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
    def layers(self) -> list[int]:
        return sorted({site.layer for site in self.sites})

    def get(self, site: Site, language: str) -> Float[Tensor, "n *dims"]:
        """All pooled vectors of ``language`` at ``site``, in corpus order."""
        meta = self.meta
        if str(site) not in meta["sites"]:
            raise StoreError(f"{self.path}: site {site} was not captured; captured: {', '.join(meta['sites'])}")
        if language not in meta["languages"]:
            raise StoreError(f"{self.path}: language {language!r} not in store; has {', '.join(meta['languages'])}")
        missing = self.missing_shards(language)
        if missing:
            raise StoreError(
                f"{self.path}: language {language!r} is incomplete (shards {missing} missing); "
                "rerun the same capture command to resume"
            )
        parts = []
        for index in range(_n_shards(meta["languages"][language]["n"], meta["shard_size"])):
            with safe_open(self._shard(language, index), framework="pt") as shard:
                parts.append(shard.get_tensor(str(site)))
        return torch.cat(parts)

    def missing_shards(self, language: str) -> list[int]:
        meta = self.meta
        n = _n_shards(meta["languages"][language]["n"], meta["shard_size"])
        return [index for index in range(n) if not self._shard(language, index).is_file()]

    def _shard(self, language: str, index: int) -> Path:
        return self.path / "shards" / language / f"{index:05d}.safetensors"


def _n_shards(n_rows: int, shard_size: int) -> int:
    return -(-n_rows // shard_size)


def _mismatches(old: dict, new: dict) -> list[str]:
    return [f"{key}: store has {old.get(key)!r}, this capture has {new[key]!r}" for key in _MUST_MATCH if old.get(key) != new[key]]


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
    batch_size: int = 16,
    max_length: int = 512,
    padding_side: str = "right",
    exclude_bos: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture pooled ``sites`` for every language of ``corpus`` into the store at ``out``.

    Creates the store, or resumes one made by the same command: only missing shards are computed. A store
    made with another model, pooling, site list or corpus text is a :class:`StoreError` naming what differs.
    """
    out = Path(out)
    languages = list(languages or corpus.languages)
    settings = {
        "model": model_identity(model),
        "pooling": pooling,
        "sites": [str(site) for site in sorted(set(sites))],
        "shard_size": shard_size,
        "max_length": max_length,
        "exclude_bos": exclude_bos,
        "padding_side": padding_side,
    }
    wanted = {lang: {"n": len(corpus), "fingerprint": corpus.fingerprint([lang])} for lang in languages}
    meta = _open_or_create(out, settings, wanted, corpus.name)
    store = ActivationStore(out)
    site_list = [Site.parse(text) for text in settings["sites"]]
    for lang in languages:
        texts = corpus.texts(lang)
        for index in store.missing_shards(lang):
            rows = slice(index * shard_size, min((index + 1) * shard_size, len(texts)))
            pooled = capture(
                model, tokenizer, texts[rows], site_list, pooling=pooling, batch_size=batch_size,
                max_length=max_length, padding_side=padding_side, exclude_bos=exclude_bos, progress=progress,
            )  # fmt: skip
            _write_shard(store._shard(lang, index), pooled, meta["model"]["name"])
    return store


def _open_or_create(out: Path, settings: dict, wanted: dict, corpus_name: str) -> dict:
    """Check an existing store against ``settings`` (or create it) and register the wanted languages."""
    if (out / META).is_file():
        meta = json.loads((out / META).read_text())
        problems = _mismatches(meta, settings)
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
        meta = {**settings, "languages": {}, "corpus": corpus_name, "version": __version__}
    meta["languages"] = {**meta["languages"], **wanted}
    write_text(out / META, json.dumps(meta, indent=2))
    return meta


def _write_shard(path: Path, pooled: dict[Site, Tensor], model_name: str) -> None:
    tensors = {str(site): tensor.contiguous() for site, tensor in pooled.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={"model": model_name})
