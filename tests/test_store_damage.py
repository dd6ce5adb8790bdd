"""A store cannot be silently damaged or escaped: every shard is checked on read, a resume repairs damage and
says so, ``check`` lists it, and names read from meta.json never lead outside the store."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from conftest import tiny
from probes.analysis import measure
from probes.capture import ActivationStore, StoreError, Tokenization, capture_to_store
from probes.data import demo_corpus
from probes.model import Site
from xlalign.cli import main

SITES = [Site(1, "resid"), Site(3, "resid")]
OPTIONS = dict(shard_size=8, tokenization=Tokenization(batch_size=4))


@pytest.fixture()
def store(tmp_path):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 20)
    return capture_to_store(model, tokenizer, corpus, SITES, tmp_path / "store", **OPTIONS)


def recapture(path):
    model, tokenizer = tiny("llama")
    return capture_to_store(model, tokenizer, demo_corpus().subset(["eng", "deu", "jpn"], 20), SITES, path, **OPTIONS)


def flip_a_byte(path, offset_from_end: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped": (lambda shard, store: flip_a_byte(shard), "do not match their checksum"),
    "truncated": (lambda shard, store: shard.write_bytes(shard.read_bytes()[:100]), "not a readable safetensors"),
    "zeroed": (lambda shard, store: shard.write_bytes(bytes(len(shard.read_bytes()))), "not a readable safetensors"),
    "header": (lambda shard, store: shard.write_bytes(b"\x10" + shard.read_bytes()[1:]), "not a readable safetensors"),
    "swapped": (lambda shard, store: shutil.copy(store.shard("eng", 1), shard), "language 'eng' \\(expected 'deu'\\)"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_found_on_read_listed_by_check_and_repaired_on_resume(store, kind, capsys):
    damage, message = DAMAGE[kind]
    reference = {site: store.get(site, "deu") for site in SITES}
    before = store.shard("deu", 1).read_bytes()
    damage(store.shard("deu", 1), store)
    with pytest.raises(StoreError, match=f"deu/00001.safetensors is damaged: .*{message}.*Repair: rerun the capture"):
        measure(ActivationStore(store.path))
    assert list(ActivationStore(store.path).check()) == [store.shard("deu", 1)]
    assert main(["check", str(store.path)]) == 1
    err = capsys.readouterr().err
    assert "deu/00001.safetensors" in err and "1 damaged or missing shards" in err
    with pytest.warns(UserWarning, match="deu/00001.safetensors is damaged .*; recomputing it"):
        repaired = recapture(store.path)
    assert repaired.shard("deu", 1).read_bytes() == before, "recomputed bit for bit"
    assert all(torch.equal(repaired.get(site, "deu"), reference[site]) for site in SITES)
    assert main(["check", str(store.path)]) == 0 and "the store is good" in capsys.readouterr().out


def test_edited_metadata_is_noticed(store):
    meta = json.loads((store.path / "meta.json").read_text())
    for edit, message in (
        (lambda m: m["languages"]["deu"].update(n=19), r"stop 20 \(expected 19\)"),
        (lambda m: m["model"].update(weights_sha256="0" * 16), r"weights '[0-9a-f]{16}' \(expected '0{16}'\)"),
    ):
        changed = json.loads(json.dumps(meta))
        edit(changed)
        (store.path / "meta.json").write_text(json.dumps(changed))
        with pytest.raises(StoreError, match=message):
            ActivationStore(store.path).get(SITES[0], "deu")
    (store.path / "meta.json").write_text(json.dumps(meta))
    assert ActivationStore(store.path).check() == {}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m["languages"].update({"../../outside": m["languages"]["deu"]}),
            "'../../outside', which is not a language code",
        ),
        (lambda m: m["languages"].update({"/etc": m["languages"]["deu"]}), "'/etc', which is not a language code"),
        (lambda m: m["sites"].append("../resid.1"), "'../resid.1', which is not a site name"),
        (lambda m: m.pop("languages"), "lacks 'languages'"),
        (lambda m: m.update(shard_size=0), "shard_size is 0, not a positive int"),
    ],
)
def test_metadata_cannot_point_outside_the_store(store, edit, message):
    meta = json.loads((store.path / "meta.json").read_text())
    edit(meta)
    (store.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=message):
        ActivationStore(store.path)


def test_unreadable_metadata_and_links_out_of_the_store_are_errors(store, tmp_path):
    (store.path / "meta.json").write_text("{not json")
    with pytest.raises(StoreError, match="meta.json is not valid JSON"):
        ActivationStore(store.path)
    fresh = recapture(tmp_path / "again")
    outside = tmp_path / "outside"
    shutil.move(fresh.path / "shards" / "deu", outside)
    os.symlink(outside, fresh.path / "shards" / "deu")
    with pytest.raises(StoreError, match="leads outside the store"):
        fresh.get(SITES[0], "deu")


def test_a_resume_with_other_settings_refuses_and_names_them(store):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 20)
    with pytest.raises(StoreError, match="tokenization: store has .*'batch_size': 4.*'batch_size': 16"):
        capture_to_store(model, tokenizer, corpus, SITES, store.path, shard_size=8)
    assert ActivationStore(store.path).meta["device"] == "cpu"
