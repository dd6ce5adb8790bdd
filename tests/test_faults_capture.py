"""Capture faults: inf/NaN stop a capture at the first layer (and leave no store it created), every finder refuses
them, ``check`` flags a shard holding them, a rejected site writes nothing, and a resume deletes the temporary
files a killed capture left."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys

import pytest
import torch

from conftest import tiny
from probes.analysis import Activations
from probes.capture import ActivationStore, NeuronStats, NonFiniteError, StatsError
from probes.capture import capture_corpus, capture_to_store, collect_stats
from probes.capture.shards import write_shard
from probes.data import demo_corpus
from probes.data.files import atomic_path, is_temporary
from probes.find import LAPE, APExperts, HeadProbe, LanguageIDProbe
from probes.find import fit_detector, fit_diffmean, fit_eraser, fit_map, fit_shift
from probes.model import Site, blocks
from xlalign import jobs
from xlalign.cli import main

SMALL = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu", "--max-sentences", "6", "--no-progress"]
OVERFLOW = re.escape(
    "resid.2 (layer 2) of eng holds non-finite values (inf/NaN) in float16: the model overflows in this dtype; "
    "use --dtype bfloat16 or float32"
)


@functools.lru_cache(maxsize=None)
def overflowing(dtype: torch.dtype = torch.float16, scale: float = 3000.0):
    """A copy of the tiny llama in ``dtype`` whose block 2 MLP sees inputs ``scale`` times too large: in float16
    its output overflows to inf (from layer 2 on); in float32 it is finite."""
    model, tokenizer = tiny("llama")
    copied = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        blocks(copied)[1].post_attention_layernorm.weight.mul_(scale)
    return copied, tokenizer


def corpus():
    return demo_corpus().subset(["eng", "deu"], 6)


def test_capture_stops_at_the_first_non_finite_layer_and_leaves_no_store(tmp_path):
    model, tokenizer = overflowing()
    sites = [Site(layer, "resid") for layer in range(5)]
    with pytest.raises(NonFiniteError, match=OVERFLOW):
        jobs.capture(tmp_path / "new" / "store", model=model, tokenizer=tokenizer, corpus=corpus(), sites=sites)
    assert not (tmp_path / "new" / "store").exists(), "a store this capture created is removed"
    (tmp_path / "empty").mkdir()
    with pytest.raises(NonFiniteError, match=OVERFLOW):
        capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "empty", shard_size=2)
    assert list((tmp_path / "empty").iterdir()) == [], "a directory that existed stays, emptied of the store"
    with pytest.raises(NonFiniteError, match=OVERFLOW):
        capture_corpus(model, tokenizer, corpus(), sites)
    with pytest.raises(NonFiniteError, match="mlp_act.2 \\(layer 2\\) of eng .* in float16"):
        collect_stats(model, tokenizer, corpus(), [Site(layer, "mlp_act") for layer in (1, 2, 3)], bins=0)
    finite = capture_corpus(*overflowing(torch.float32), corpus(), sites)  # the same weights fit in float32
    assert all(torch.isfinite(finite.get(site, "deu")).all() for site in sites)


def test_a_resumed_store_keeps_its_finished_shards_when_capture_meets_inf(tmp_path):
    model, tokenizer = overflowing(torch.float16, scale=1.0)  # a float16 copy that does not overflow by itself
    sites = [Site(1, "resid"), Site(3, "resid")]
    store = capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", languages=["eng"], shard_size=4)
    finished = {path: path.read_bytes() for path in (tmp_path / "s").rglob("*") if path.is_file()}
    handle = blocks(model)[2].register_forward_hook(lambda _m, _a, out: out * float("inf"))  # now deu overflows
    try:
        expected = f"resid.3 \\(layer 3\\) of deu .* in float16: .*into a new --out: {re.escape(str(store.path))} was"
        with pytest.raises(NonFiniteError, match=expected):
            capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", shard_size=4)
    finally:
        handle.remove()
    for path, data in finished.items():
        assert path.read_bytes() == data or path.name == "meta.json"
    assert ActivationStore(tmp_path / "s").check(["eng"]) == {}
    assert ActivationStore(tmp_path / "s").missing_shards("deu") == [0, 1], "nothing of deu was written"


def finder_inputs():
    """Activations (resid, mlp_act and head sites, 3 languages, float16 model) with a NaN at layer 2 of deu."""
    g = torch.Generator().manual_seed(0)
    data = {}
    for lang in ("eng", "deu", "fra"):
        for layer in (1, 2):
            data[Site(layer, "resid"), lang] = torch.randn(12, 8, generator=g)
            data[Site(layer, "mlp_act"), lang] = torch.randn(12, 8, generator=g)
            data[Site(layer, "head"), lang] = torch.randn(12, 2, 4, generator=g)
    for component in ("resid", "mlp_act", "head"):
        data[Site(2, component), "deu"][5].view(-1)[3] = float("nan")
    return Activations(data, model={"dtype": "float16"}, pooling="mean")


FINDERS = {
    "shift": lambda acts: fit_shift(acts, "deu", method="mean"),
    "map": lambda acts: fit_map(acts, "deu", method="procrustes"),
    "heads": lambda acts: HeadProbe(cv=2).fit(acts, "deu"),
    "ap": lambda acts: APExperts(k=3).fit(acts, "mlp_act"),
    "erasure": lambda acts: fit_eraser(acts),
    "detector": lambda acts: fit_detector(acts, 2),
    "langid": lambda acts: LanguageIDProbe(cv=2).fit(acts),
}


@pytest.mark.parametrize("finder", FINDERS)
def test_finders_refuse_non_finite_activations_naming_site_language_and_dtype(finder):
    expected = "(resid|mlp_act|head).2 \\(layer 2\\) of deu .*in float16: .*capture again with --dtype bfloat16"
    with pytest.raises(NonFiniteError, match=expected):
        FINDERS[finder](finder_inputs())


def test_finders_on_statistics_refuse_non_finite_values():
    stats = NeuronStats(bins=0)
    with pytest.raises(NonFiniteError, match="mlp_gate.1 \\(layer 1\\) of eng holds non-finite") as raised:
        stats.add(Site(1, "mlp_gate"), "eng", torch.tensor([[1.0, float("inf")]], dtype=torch.float16))
    assert isinstance(raised.value, StatsError) and "float16" in str(raised.value)
    p = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0))
    p[1, 4, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="mlp_gate.2 of fra holds non-finite"):
        LAPE().fit(p, languages=["eng", "deu", "fra"])

    class Means:  # token means as a NeuronStats gives them, one of them non-finite
        sites, model = [Site(1, "resid")], {"dtype": "bfloat16"}

        def mean(self, site, language):
            return torch.full((4,), float("inf") if language == "deu" else 1.0)

    with pytest.raises(NonFiniteError, match="resid.1 \\(layer 1\\) of deu .* in bfloat16: .*--dtype float32"):
        fit_diffmean(Means(), "deu", layers=[1])


def test_check_flags_a_shard_holding_non_finite_values_and_a_resume_recomputes_it(tmp_path, capsys):
    model, tokenizer = tiny("llama")
    sites = [Site(1, "resid"), Site(3, "resid")]
    store = capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", shard_size=4)
    good = store.shard("deu", 1).read_bytes()
    tensors = {str(site): store.get(site, "deu")[4:].clone() for site in sites}
    tensors["resid.3"][0, 0] = float("nan")
    write_shard(store.shard("deu", 1), tensors, store.shard_info("deu", 1))  # valid checksums, NaN inside
    problems = ActivationStore(store.path).check()
    assert list(problems) == [store.shard("deu", 1)]
    assert "resid.3 holds non-finite values (inf/NaN)" in problems[store.shard("deu", 1)]
    assert main(["check", str(store.path)]) == 1
    assert "deu/00001.safetensors: resid.3 holds non-finite" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="non-finite.*recomputing it"):
        capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", shard_size=4)
    assert store.shard("deu", 1).read_bytes() == good


REJECTED = [
    ("resid.99", "hf", "resid.99: the model has 4 blocks"),
    ("mlp_gate", "tl", "the TransformerLens backend cannot read or edit 'mlp_gate'"),
]


@pytest.mark.parametrize("sites, backend, message", REJECTED)
def test_a_rejected_site_writes_nothing_and_the_corrected_command_succeeds(tmp_path, capsys, sites, backend, message):
    out = tmp_path / "s"
    assert main(["capture", *SMALL, "--backend", backend, "--sites", sites, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(["capture", *SMALL, "--sites", "resid.1", "--out", str(out)]) == 0


KILLED_WRITE = """
import os, sys
from probes.data.files import atomic_path
with atomic_path(sys.argv[1]) as temporary:
    temporary.write_bytes(b"half a shard")
    os.kill(os.getpid(), 9)
"""


def test_a_resume_deletes_the_temporary_files_a_killed_capture_left(tmp_path):
    model, tokenizer = tiny("llama")
    sites = [Site(1, "resid")]
    store = capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", shard_size=4)
    store.shard("deu", 1).unlink()
    # killed -9 while writing deu's last shard; the resume is for eng only, so it never rewrites that name
    assert subprocess.run([sys.executable, "-c", KILLED_WRITE, str(store.shard("deu", 1))]).returncode == -9
    assert [path.name for path in store.path.rglob(".*")] == [".00001.safetensors.tmp.safetensors"]
    capture_to_store(model, tokenizer, corpus(), sites, tmp_path / "s", languages=["eng"], shard_size=4)
    assert [path.name for path in store.path.rglob(".*")] == []
    assert ActivationStore(store.path).check() == {store.shard("deu", 1): "missing"}
    assert not is_temporary(".keep") and not is_temporary("00000.safetensors") and not is_temporary(".notes.tmp.txt")
    with atomic_path(tmp_path / "x.json") as temporary:
        assert is_temporary(temporary.name)
        temporary.write_text("{}")


@pytest.mark.slow
def test_float16_on_cpu_overflows_the_default_model_and_capture_says_where(tmp_path, capsys):
    out = tmp_path / "store"
    argv = ["capture", "--model", "default", "--dtype", "float16", "--corpus", "demo", "--langs", "eng,deu"]
    argv += ["--max-sentences", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loader's progress bar
    assert err.startswith(
        "xlalign capture: error: hidden.8 (layer 8) of eng holds non-finite values (inf/NaN) in "
        "float16: the model overflows in this dtype; use --dtype bfloat16 or float32"
    ), err
    assert not out.exists()
