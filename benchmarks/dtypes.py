"""Pooled capture in bfloat16 against float32, interleaved in one run, on this machine's device.

The same model loaded in both dtypes (the random Llama-style model of :mod:`benchmarks.capture` and the
embedded Gemma 3 270M); each round captures pooled ``resid`` of every layer once in each. Ends with
``RATIO capture_bf16_vs_fp32[<model>]`` (throughput of bfloat16 over float32; target >= 1.8 where the
processor computes in bfloat16 natively, e.g. AVX-512 BF16 or AMX, or on a GPU) and the largest relative
difference of the pooled vectors.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.capture import random_llama
from benchmarks.timing import describe, interleaved, make_batches, non_pad_tokens, paired_ratio
from probes.capture import capture_batches
from probes.model import Site, load_model, n_layers


def bench(name: str, fp32: torch.nn.Module, bf16: torch.nn.Module, rounds: int) -> None:
    work = make_batches(fp32.config.vocab_size, 1)
    sites = [Site(layer, "resid") for layer in range(n_layers(fp32) + 1)]
    times = interleaved(
        f"{name}, {describe(work)}",
        {"fp32": lambda: capture_batches(fp32, work, sites), "bf16": lambda: capture_batches(bf16, work, sites)},
        rounds,
        non_pad_tokens(work),
    )
    exact, rounded = capture_batches(fp32, work, sites), capture_batches(bf16, work, sites)
    relative = max(float((exact[s] - rounded[s]).norm(dim=-1).div(exact[s].norm(dim=-1)).max()) for s in sites[1:])
    print(f"largest relative difference of a pooled vector (layers 1..{len(sites) - 1}): {relative:.4f}")
    print(f"RATIO capture_bf16_vs_fp32[{name}] {paired_ratio(times, 'fp32', 'bf16'):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip-default", action="store_true", help="only the random Llama-style model")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    llama = random_llama()
    bench("random_llama", llama, random_llama().to(torch.bfloat16), args.rounds)
    if not args.skip_default:
        bench("gemma3_270m", load_model("default")[0], load_model("default", dtype="bfloat16")[0], args.rounds)


if __name__ == "__main__":
    main()
