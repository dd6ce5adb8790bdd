"""ActivationStore: pooled activations per (site, language) on disk, sentence-aligned, resumable and checked.

Layout::

    STORE/meta.json                       format, model identity, pooling, sites, settings, languages, ...
    STORE/shards/LANG/00000.safetensors   rows [0, shard_size) of LANG, one tensor per site ('resid.7')

Each shard is computed from its own rows only (batches never cross a shard), written under a temporary name
and renamed. An interrupted capture therefore resumes by computing the missing shards and ends bit-for-bit
equal to an uninterrupted one. Every shard carries its language, rows, the model's weight fingerprint and a
checksum per tensor (:mod:`probes.capture.shards`): a read checks them, a resume recomputes damaged shards and
says so, and :meth:`ActivationStore.check` lists every damaged one (a tensor holding inf or NaN included). Names
read from ``meta.json`` (languages, sites) are validated before any path is built from them, and every path stays
inside the store. Every argument (sites against the model and backend included) is checked before ``meta.json``
is written; a resume deletes the temporary files a killed capture left; a capture that meets inf or NaN stops
there and leaves no store behind if it created it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from probes.capture.bundle import takes_bundle
from probes import __version__
from probes.analysis.activations import Activations, ActivationsError, NonFiniteError
from probes.capture.distributed import ranks
from probes.capture.pooled import capture, naming
from probes.capture.pooling import POOLINGS, check_pooling
from probes.capture.progress import Progress, progress_bar
from probes.capture.record import check_sites
from probes.capture.remote import capture_remote, check_remote_sites, check_service
from probes.capture.shards import ShardDamage, ShardInfo, damage, read_tensor, write_shard
from probes.capture.tokenization import Tokenization
from probes.data import ParallelCorpus
from probes.data.files import remove_leftovers, write_text
from probes.model.access import site_location
from probes.model.identity import identity_mismatches, model_identity
from probes.model.sites import Site, SiteError

META = "meta.json"
FORMAT = 3  # meta.json and shard layout; a store of another format is refused
# Keys whose values must agree between a store and a capture that writes into it (besides the model).
_MUST_MATCH = ("pooling", "sites", "shard_size", "tokenization", "device")
_REQUIRED = ("format", "model", "pooling", "sites", "shard_size", "tokenization", "device", "languages")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")  # what probes.data.normalize_language produces


class StoreError(ActivationsError):
    """A store that is missing, incomplete, or does not match what it is combined with."""


class ActivationStore(Activations):
    """A finished or partial store on disk. Open with ``ActivationStore(path)``; read like :class:`Activations`."""

    Error = StoreError

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / META).is_file():
            raise StoreError(f"{self.path} is not an activation store (no {META}); create one with `xlalign capture`")
        self.meta  # noqa: B018 (read and validated now, so a bad store fails on open)

    @cached_property
    def meta(self) -> dict:
        """The store's metadata, read once per opened store and validated before any path is built from it."""
        path = self.path / META
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StoreError(
                f"{path} is not valid JSON ({error}); restore it or capture into a new directory"
            ) from None
        if not isinstance(meta, dict):
            raise StoreError(f"{path} holds a {type(meta).__name__}, not the store's metadata")
        if meta.get("format", 1) != FORMAT:
            raise StoreError(
                f"{self.path} was written by xlalign {meta.get('version', '< 0.2')} in store format "
                f"{meta.get('format', 1)}; this xlalign ({__version__}) reads format {FORMAT}: capture it again "
                "into a new directory"
            )
        _validate(meta, path)
        return meta

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
        for index in range(self.n_shards(language)):
            path = self.shard(language, index)
            try:
                parts.append(read_tensor(path, str(site), self.shard_info(language, index), self.meta["sites"]))
            except ShardDamage as problem:
                raise StoreError(f"{path} is damaged: {problem}. {REPAIR}") from None
        return torch.cat(parts)

    def n_shards(self, language: str) -> int:
        return -(-self.meta["languages"][language]["n"] // self.meta["shard_size"])

    def missing_shards(self, language: str) -> list[int]:
        return [index for index in range(self.n_shards(language)) if not self.shard(language, index).is_file()]

    def shard_info(self, language: str, index: int) -> ShardInfo:
        """What shard ``index`` of ``language`` must hold, according to the metadata."""
        size, n = self.meta["shard_size"], self.meta["languages"][language]["n"]
        return ShardInfo(
            language, index, index * size, min((index + 1) * size, n), self.meta["model"]["weights_sha256"]
        )

    def shard(self, language: str, index: int) -> Path:
        """The file of shard ``index`` of ``language`` (a validated name: the path stays inside the store)."""
        if language not in self.meta["languages"]:
            raise StoreError(f"{self.path}: no language {language!r}; it has {', '.join(self.languages)}")
        path = self.path / "shards" / language / f"{index:05d}.safetensors"
        if not path.resolve().is_relative_to(self.path.resolve()):
            raise StoreError(f"{path} leads outside the store {self.path} (a link?); refusing to read or write it")
        return path

    def check(self, languages: Sequence[str] | None = None) -> dict[Path, str]:
        """Every damaged or missing shard (of ``languages``, default all) with what is wrong; empty when good.
        Reads and verifies every tensor."""
        problems = {}
        for language in languages or self.languages:
            for index in range(self.n_shards(language)):
                path = self.shard(language, index)
                found = damage(path, self.shard_info(language, index), self.meta["sites"])
                if found is not None:
                    problems[path] = found
        return problems


REPAIR = "Repair: rerun the capture command that made the store; it recomputes damaged and missing shards."


def _validate(meta: dict, path: Path) -> None:
    """Raise :class:`StoreError` naming the first key of ``meta`` that is missing or not what a store holds."""
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise StoreError(f"{path} lacks {', '.join(map(repr, missing))}; it is damaged: capture into a new directory")

    def bad(key: str, why: str) -> StoreError:
        return StoreError(f"{path}: {key} {why}; the file was edited or damaged: capture into a new directory")

    if not isinstance(meta["shard_size"], int) or meta["shard_size"] < 1:
        raise bad("shard_size", f"is {meta['shard_size']!r}, not a positive int")
    if meta["pooling"] not in POOLINGS:
        raise bad("pooling", f"is {meta['pooling']!r}")
    if not isinstance(meta["sites"], list) or not meta["sites"]:
        raise bad("sites", "is not a list of site names")
    for text in meta["sites"]:
        try:
            if str(Site.parse(text)) != text:
                raise SiteError(text)
        except (SiteError, AttributeError, TypeError):
            raise bad("sites", f"holds {text!r}, which is not a site name like 'resid.7'") from None
    if not isinstance(meta["model"], dict) or "weights_sha256" not in meta["model"]:
        raise bad("model", "has no weight fingerprint")
    if not isinstance(meta["languages"], dict):
        raise bad("languages", "is not a mapping of language codes")
    for language, info in meta["languages"].items():
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            raise bad("languages", f"holds {language!r}, which is not a language code (e.g. 'eng', 'zho-CN')")
        if not isinstance(info, dict) or not isinstance(info.get("n"), int) or info["n"] < 1:
            raise bad(f"languages[{language!r}]", "has no positive sentence count n")


@takes_bundle
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
    remote: bool | str | None = None,
    progress: Progress = False,
) -> ActivationStore:
    """Capture pooled ``sites`` for every language of ``corpus`` into the store at ``out``.

    Creates the store, or resumes one made by the same command: only missing and damaged shards are computed
    (a warning names each damaged one). A store made with another model (weights and dtype included), device
    type, pooling, site list, tokenisation or corpus text is a :class:`StoreError` naming what differs.
    Under ``torchrun`` the (language, shard) pairs are split across the ranks (:mod:`probes.capture.distributed`):
    rank 0 checks or creates the store, each rank writes its own shards, and all return once all are written;
    the store equals a single-process one bit for bit, and a job any rank of which died resumes like any other.
    ``remote`` (an nnsight model only): each shard is one NDIF request (:func:`probes.capture.remote.capture_remote`;
    ``"local"``: its offline simulation).
    """
    out = Path(out)
    check_pooling(pooling)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise StoreError(f"shard_size must be a positive number of sentences, got {shard_size!r}")
    chosen = check_sites(sites)
    if remote is not None:  # each site exists in this model and backend before meta.json is written
        check_remote_sites(model, chosen)
    else:
        for site in chosen:
            site_location(model, site)
    languages = list(languages or corpus.languages)
    with warnings.catch_warnings():  # the settings work with this tokenizer (e.g. a chat template it lacks)
        warnings.simplefilter("ignore")  # a truncation warning comes with the capture itself
        tokenization.encode(tokenizer, corpus.texts(languages[0])[:1])
    settings = {
        "pooling": pooling,
        "sites": [str(site) for site in chosen],
        "shard_size": shard_size,
        "tokenization": tokenization.as_dict(),
        "device": next(model.parameters()).device.type,  # GPUs and CPUs give (slightly) different numbers
    }
    wanted = {lang: {"n": len(corpus), "fingerprint": corpus.fingerprint([lang])} for lang in languages}
    group = ranks()
    existed, created = out.exists(), not (out / META).is_file()

    def open_or_create() -> None:
        if remote is not None:
            check_service(model, remote)  # once, and before the store is created
        _open_or_create(out, settings, model_identity(model), wanted, corpus.name)

    group.on_main(open_or_create)
    store = ActivationStore(out)
    units = group.mine([(lang, index) for lang in languages for index in range(store.n_shards(lang))])
    damaged = {}
    for lang, index in units:
        problem = damage(store.shard(lang, index), store.shard_info(lang, index), store.meta["sites"])
        if problem is not None:
            damaged[lang, index] = problem
            if problem != "missing":
                warnings.warn(f"{store.shard(lang, index)} is damaged ({problem}); recomputing it", stacklevel=2)
    try:
        with progress_bar(progress if group.is_main else False, "capture") as bar:
            for lang, index in damaged:
                bar.set_description(f"capture {lang} (shard {index + 1}/{store.n_shards(lang)})")
                info = store.shard_info(lang, index)
                part = corpus.texts(lang)[info.start : info.stop]
                with naming(lang):
                    if remote is None:
                        pooled = capture(
                            model, tokenizer, part, chosen, pooling=pooling, tokenization=tokenization, progress=bar
                        )
                    else:
                        pooled = capture_remote(
                            model,
                            tokenizer,
                            part,
                            chosen,
                            pooling=pooling,
                            remote=remote,
                            tokenization=tokenization,
                            check=False,
                        )
                write_shard(store.shard(lang, index), {str(site): tensor for site, tensor in pooled.items()}, info)
    except NonFiniteError as error:
        if not created and error.dtype in ("float16", "bfloat16"):  # its finished shards stay, in that dtype
            error.args = (f"{error} (into a new --out: {out} was made in {error.dtype} and resumes only in it)",)
        elif group.world == 1:  # nothing of it is usable: leave no store (and nothing that was there before)
            _remove_store(out, keep_directory=existed)
        raise
    group.barrier()  # every rank's shards are written before any rank reads the store
    return store


def _remove_store(out: Path, *, keep_directory: bool) -> None:
    """Delete the store this capture created at ``out`` (its metadata and shards; ``out`` itself unless
    ``keep_directory``: it existed, empty, before)."""
    if not keep_directory:
        shutil.rmtree(out, ignore_errors=True)
        return
    shutil.rmtree(out / "shards", ignore_errors=True)
    (out / META).unlink(missing_ok=True)
    remove_leftovers(out)


def _open_or_create(out: Path, settings: dict, identity: dict, wanted: dict, corpus_name: str) -> None:
    """Check an existing store against ``settings`` (or create it) and register the wanted languages; resuming
    the same capture, delete the temporary files a killed one left (no rank writes yet)."""
    if (out / META).is_file():
        meta = ActivationStore(out).meta
        problems = [f"model {line}" for line in identity_mismatches(meta["model"], identity, exact=True)]
        problems += [
            f"{key}: store has {meta.get(key)!r}, this capture has {settings[key]!r}"
            for key in _MUST_MATCH
            if meta.get(key) != settings[key]
        ]
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
                f"{out} was made by a different capture:\n  "
                + "\n  ".join(problems)
                + "\nUse a new --out directory, or repeat the original command to resume it."
            )
        inside = out.resolve()
        for directory in [out, *(out / "shards").glob("*/")]:
            if directory.resolve().is_relative_to(inside):  # never a linked directory elsewhere
                remove_leftovers(directory)
    else:
        if out.exists() and any(out.iterdir()):
            raise StoreError(f"{out} exists and is not an activation store; choose an empty or new directory")
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": __version__,
            "model": identity,
            **settings,
            "languages": {},
            "corpus": corpus_name,
        }
    meta["languages"] = {**meta["languages"], **wanted}
    write_text(out / META, json.dumps(meta, indent=2))
