"""Capture overhead against plain forward passes, interleaved in one run.

For each model, every round times each method once over the same batches, in rotating order; the table
reports median throughput and ends with ``RATIO <name> <value>`` lines (throughput of the method divided by
throughput of its baseline):

- capture_vs_floor: pooled capture of every layer's resid vs the decoder stack without the LM head;
- capture_vs_full: the same capture vs ``model(**batch)`` with logits (what users run);
- middle_exit_vs_full: capture of the middle layer only, with early exit, vs ``model(**batch)``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from probes.capture import Batch, capture_batches
from probes.models import load_model
from probes.sites import Site, n_layers


def random_llama() -> torch.nn.Module:
    config = LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                         intermediate_size=1408, vocab_size=32000)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def make_batches(vocab_size: int, n_batches: int, batch_size: int = 16, tokens: int = 64) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for b in range(n_batches):
        ids = torch.randint(4, vocab_size, (batch_size, tokens), generator=generator)
        mask = torch.ones_like(ids)
        mask[::2, -tokens // 4 :] = 0  # half the rows are right-padded by a quarter
        rows = torch.arange(b * batch_size, (b + 1) * batch_size)
        out.append(Batch(rows, ids, mask, mask.bool()))
    return out


def methods(model, work):
    layers = n_layers(model)
    every_resid = [Site(layer, "resid") for layer in range(layers + 1)]
    middle = [Site(layers // 2, "resid")]

    def floor():
        with torch.inference_mode():
            for batch in work:
                model.base_model(**batch.model_inputs(model.base_model), use_cache=False)

    def full():
        with torch.inference_mode():
            for batch in work:
                model(**batch.model_inputs(model))

    return {
        "floor": floor,
        "full": full,
        "capture": lambda: capture_batches(model, work, every_resid),
        "middle_exit": lambda: capture_batches(model, work, middle),
    }


def bench(name: str, model, work, rounds: int) -> dict[str, float]:
    runs = methods(model, work)
    tokens = sum(int(batch.attention_mask.sum()) for batch in work)
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    throughput = {key: tokens / statistics.median(values) for key, values in times.items()}
    print(f"\n{name}: {len(work)} batches x {work[0].input_ids.shape}, {rounds} interleaved rounds")
    print(f"{'method':<14}{'median s':>10}{'tokens/s':>12}")
    for key, values in times.items():
        print(f"{key:<14}{statistics.median(values):>10.3f}{throughput[key]:>12.0f}")
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip-default", action="store_true", help="only the random Llama-style model")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = {"random_llama": bench("random Llama-style (hidden 512, 8 layers, vocab 32k)", random_llama(),
                                     make_batches(32000, 2), args.rounds)}
    if not args.skip_default:
        model, _ = load_model("default")
        results["gemma3_270m"] = bench("embedded Gemma 3 270M", model, make_batches(model.config.vocab_size, 1), args.rounds)
    print()
    for model_name, t in results.items():
        print(f"RATIO capture_vs_floor[{model_name}] {t['capture'] / t['floor']:.3f}")
        print(f"RATIO capture_vs_full[{model_name}] {t['capture'] / t['full']:.3f}")
        print(f"RATIO middle_exit_vs_full[{model_name}] {t['middle_exit'] / t['full']:.3f}")


if __name__ == "__main__":
    main()
