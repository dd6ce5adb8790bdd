"""Faults of the backends: generation with no steer/record block open returns, through every backend, the
tokens ``hf`` gives (it used to spin forever through nnsight), and the CLI's unsteered pass through nnsight
finishes. Each call runs under a deadline, so a hang fails the test instead of blocking the suite."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest
import torch

from conftest import BACKENDS, TEXTS, left_padded, through, tiny
from probes.capture.passes import generate
from probes.model import unwrap
from steer.apply import steer
from xlalign.cli import main


class Hang(RuntimeError):
    """A call ran past its deadline (not an OSError or XlalignError, which the CLI would turn into a message)."""


@contextmanager
def deadline(seconds: int):
    """Raise :class:`Hang` in the block once it has run ``seconds`` (SIGALRM; main thread only)."""

    def expire(_signum, _frame):
        raise Hang(f"still running after {seconds} s: the call hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bare_generation_through_a_backend_equals_hf_greedy_tokens(backend, family):
    model, tokenizer = tiny(family)
    network = through(backend, family)
    ids, mask = left_padded(tokenizer, TEXTS[:4])
    assert not mask.all(), "the batch must be padded"
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, **options)
        for cache in (True, False):
            assert "generate" not in vars(unwrap(network)), "no steer/record block may be open"
            with deadline(30):
                bare = generate(network, input_ids=ids, attention_mask=mask, use_cache=cache, **options)
            assert torch.equal(bare, expected), (backend, family, cache)
            with deadline(30), steer(network, []):  # a block opened and closed leaves bare generation as it was
                inside = generate(network, input_ids=ids, attention_mask=mask, use_cache=cache, **options)
            with deadline(30):
                after = generate(network, input_ids=ids, attention_mask=mask, use_cache=cache, **options)
            assert torch.equal(inside, expected) and torch.equal(after, expected), (backend, family, cache)


def continuations(output: str) -> list[tuple[str, str]]:
    """The (off, on) continuation pairs ``xlalign steer`` printed, one per prompt."""
    lines = [line.strip() for line in output.splitlines()]
    off = [line.split(":", 1)[1].strip() for line in lines if line.startswith("off:")]
    on = [line.split(":", 1)[1].strip() for line in lines if line.startswith("on:")]
    assert len(off) == len(on) > 0, output
    return list(zip(off, on))


def test_cli_steer_through_nnsight_finishes_and_prints_what_hf_prints(tmp_path, capsys):
    small = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu", "--max-sentences", "8"]
    with deadline(120):
        assert main(["find", "shift", "--method", "shift", *small, "--no-progress", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    artifact = tmp_path / "s" / "shift.deu.safetensors"
    prompts = ["--prompt", "Guten Morgen", "--prompt", "Hallo Welt, wie geht es dir heute?"]
    argv = ["steer", "--model", "random:llama", "--artifact", str(artifact), *prompts, "--strength", "4"]
    printed = {}
    for backend in ("hf", "nnsight"):
        with deadline(30):
            assert main([*argv, "--max-new-tokens", "3", "--backend", backend]) == 0, backend
        printed[backend] = continuations(capsys.readouterr().out)
    assert len(printed["nnsight"]) == 2
    assert printed["nnsight"] == printed["hf"]
    assert any(off != on for off, on in printed["hf"]), "a strong shift changes a continuation"
