"""Data-parallel jobs under torchrun (2 CPU processes, gloo): a capture split across ranks writes the store a
single process writes, bit for bit, also after one rank was killed mid-run and the job resumed; neuron
statistics (LAPE's counts) gathered across ranks equal the single-process ones, and so do the neurons `find`
writes and the results of `run`; commands that do not split refuse to start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from probes.capture import ActivationStore
from probes.artifacts import load_artifact

SMALL = ["--model", "random:gemma3", "--corpus", "demo", "--langs", "eng,deu,jpn,arb,hin,kor", "--no-progress"]
CAPTURE = ["capture", *SMALL, "--sites", "resid,mlp_out,hidden", "--shard-size", "8", "--max-sentences", "64"]


def xlalign(*args: str, ranks: int = 1, wait: bool = True):
    """``xlalign ARGS`` as one process, or under ``torchrun --nproc-per-node ranks`` (its workers on 1 thread each)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m"]
    command = [*(launcher if ranks > 1 else [sys.executable, "-m"]), "xlalign.cli", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    return done


def assert_same_store(ours: Path, theirs: Path) -> None:
    first, second = ActivationStore(ours), ActivationStore(theirs)
    assert first.meta == second.meta
    shards = sorted(path.relative_to(ours) for path in (ours / "shards").rglob("*.safetensors"))
    assert shards == sorted(path.relative_to(theirs) for path in (theirs / "shards").rglob("*.safetensors"))
    assert len(shards) == 6 * 8
    for shard in shards:
        mine, other = load_file(ours / shard), load_file(theirs / shard)
        assert mine.keys() == other.keys()
        assert all(torch.equal(mine[name], other[name]) for name in mine), shard


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "store"
    done = xlalign(*CAPTURE, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_capture_split_across_two_ranks_equals_the_single_process_store(single, tmp_path):
    done = xlalign(*CAPTURE, "--out", str(tmp_path / "store"), ranks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("wrote ") == 1, "only the main rank reports"
    assert_same_store(single, tmp_path / "store")


def test_a_split_capture_whose_rank_was_killed_resumes_to_the_single_process_store(single, tmp_path):
    out = tmp_path / "store"
    job = xlalign(*CAPTURE, "--out", str(out), ranks=2, wait=False)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(out.glob("shards/*/*.safetensors"))) < 4:
            time.sleep(0.02)
        children = psutil.Process(job.pid).children(recursive=True)
        workers = [child for child in children if "xlalign.cli" in child.cmdline()]
        rank_one = next(w for w in workers if w.environ().get("RANK") == "1")
        rank_one.send_signal(signal.SIGKILL)
        assert job.wait(timeout=120) != 0, "torchrun reports the dead rank"
    finally:
        for process in [job, *workers]:
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
    written = len(list(out.glob("shards/*/*.safetensors")))
    assert 4 <= written < 48, f"the kill came mid-run ({written} of 48 shards written)"
    done = xlalign(*CAPTURE, "--out", str(out), ranks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_store(single, out)


STATS_SCRIPT = """
import sys, torch
from probes.capture import collect_stats
from probes.capture.distributed import ranks
from probes.data import demo_corpus
from probes.model import Site, load_model
model, tokenizer = load_model("random:gemma3")
corpus = demo_corpus().subset(["eng", "deu", "jpn", "arb", "hin"], n=24)
stats = collect_stats(model, tokenizer, corpus, [Site(layer, "mlp_gate") for layer in range(1, 5)], bins=16)
if ranks().is_main:
    torch.save({"state": stats.state_dict(), "languages": stats.languages}, sys.argv[1])
"""


def test_neuron_statistics_gathered_across_two_ranks_equal_the_single_process_statistics(tmp_path):
    script = tmp_path / "stats.py"
    script.write_text(STATS_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command, name in (([sys.executable], "one.pt"), (launcher, "two.pt")):
        done = subprocess.run(
            [*command, str(script), str(tmp_path / name)], env=environment, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    assert one["languages"] == two["languages"] == ["eng", "deu", "jpn", "arb", "hin"]
    assert list(one["state"]) == list(two["state"]) and len(one["state"]) == 4 * 5 * 9
    for name, tensor in one["state"].items():
        assert torch.equal(tensor, two["state"][name]), name


def test_lape_neurons_found_across_two_ranks_equal_the_single_process_neurons(tmp_path):
    find = ["find", "neurons", *SMALL, "--max-sentences", "24"]
    assert xlalign(*find, "--out", str(tmp_path / "one.safetensors")).returncode == 0
    done = xlalign(*find, "--out", str(tmp_path / "two.safetensors"), ranks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = load_artifact(tmp_path / "one.safetensors"), load_artifact(tmp_path / "two.safetensors")
    assert one == two and len(one.languages) == 6 and len(one) > 0


def test_a_run_under_torchrun_writes_the_single_process_results(tmp_path):
    run = ["run", *SMALL[:4], "--langs", "eng,deu,jpn", "--max-sentences", "20", "--no-progress"]
    for out, ranks in (("one", 1), ("two", 2)):
        done = xlalign(*run, "--out", str(tmp_path / out), ranks=ranks)
        assert done.returncode == 0, done.stdout + done.stderr
    for name in ("metrics.csv", "evaluation.csv", "generations.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_command_that_does_not_split_refuses_to_start_under_torchrun(tmp_path):
    done = xlalign("find", "shift", *SMALL, "--out", str(tmp_path / "shifts"), ranks=2)
    assert done.returncode != 0
    assert "is not split across processes: run it as one process" in done.stdout + done.stderr
    assert not (tmp_path / "shifts").exists()
