"""Shared benchmark helpers: synthetic padded batches and interleaved timing against a baseline."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import torch

from probes.capture import Batch


def make_batches(vocab_size: int, n_batches: int, batch_size: int = 16, tokens: int = 64) -> list[Batch]:
    """Seeded random token batches; half the rows are right-padded by a quarter."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for b in range(n_batches):
        ids = torch.randint(4, vocab_size, (batch_size, tokens), generator=generator)
        mask = torch.ones_like(ids)
        mask[::2, -tokens // 4 :] = 0
        rows = torch.arange(b * batch_size, (b + 1) * batch_size)
        out.append(Batch(rows, ids, mask, mask.bool()))
    return out


def interleaved(
    name: str, runs: dict[str, Callable[[], object]], rounds: int, tokens: int = 0
) -> dict[str, list[float]]:
    """Time every run once per round, in rotating order, after one warm-up each; print the median and best
    seconds (and the median's tokens per second when ``tokens`` is given) and return the seconds per round."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    print(f"\n{name}: {rounds} interleaved rounds, {torch.get_num_threads()} thread(s)")
    print(f"{'method':<18}{'median s':>10}{'best s':>10}" + (f"{'tokens/s':>12}" if tokens else ""))
    for key, values in times.items():
        rate = f"{tokens / statistics.median(values):>12.0f}" if tokens else ""
        print(f"{key:<18}{statistics.median(values):>10.3f}{min(values):>10.3f}{rate}")
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``numerator``'s time over ``denominator``'s time in the same round.

    On this shared 2-core machine the speed of a call drifts by up to 30% over seconds (other tenants),
    which moves medians and minima of separate series by several percent; two calls of one round see the
    same phase, so their ratio does not drift. Throughput of a method vs a baseline: ``(baseline, method)``.
    """
    return statistics.median(n / d for n, d in zip(times[numerator], times[denominator]))


def greedy_options(tokenizer, texts: Sequence[str], new_tokens: int, device: str = "cpu") -> dict:
    """``generate`` keyword arguments for ``texts`` as one left-padded batch: greedy, exactly ``new_tokens`` new
    tokens per text (no early end at EOS, so every run does the same work)."""
    from probes.capture import Tokenization, batches

    (batch,) = batches(tokenizer, list(texts), Tokenization(batch_size=len(texts)), padding_side="left", device=device)
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )


def non_pad_tokens(work: list[Batch]) -> int:
    return sum(int(batch.attention_mask.sum()) for batch in work)


def describe(work: list[Batch]) -> str:
    return f"{len(work)} batches x {tuple(work[0].input_ids.shape)}"


def in_fresh_processes(module: str, sizes: Sequence[int]) -> list[dict]:
    """``python -m module --one N`` for each size, each in a new process (so each peak RSS is its own); returns
    the JSON dict each printed last. The module's ``main`` answers ``--one N`` with :func:`measured_once`."""
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-m", module, "--one", str(n)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def measured_once(measure: Callable[[int], dict]) -> bool:
    """If this process was started as ``--one N`` by :func:`in_fresh_processes`: print ``measure(N)`` as JSON and
    return True."""
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]))))
        return True
    return False
