"""Capture overhead against plain forward passes, interleaved in one run.

For each model, every round times each method once over the same batches, in rotating order
(:func:`benchmarks.timing.interleaved`); the run ends with ``RATIO <name> <value>`` lines (throughput of the
method divided by throughput of its baseline; :func:`benchmarks.timing.paired_ratio`):

- capture_vs_floor: pooled capture of every layer's resid vs the decoder stack without the LM head;
- capture_vs_full: the same capture vs ``model(**batch)`` with logits (what users run);
- middle_exit_vs_full: capture of the middle layer only, with early exit, vs ``model(**batch)``.
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.timing import describe, interleaved, make_batches, non_pad_tokens, paired_ratio
from probes.capture import capture_batches
from probes.model import Site, load_model, n_layers


def random_llama() -> torch.nn.Module:
    config = LlamaConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1408,
        vocab_size=32000,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip-default", action="store_true", help="only the random Llama-style model")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    llama, work = random_llama(), make_batches(32000, 2)
    results = {
        "random_llama": interleaved(
            f"random Llama-style (hidden 512, 8 layers, vocab 32k), {describe(work)}",
            methods(llama, work),
            args.rounds,
            non_pad_tokens(work),
        )
    }
    if not args.skip_default:
        model, _ = load_model("default")
        work = make_batches(model.config.vocab_size, 1)
        results["gemma3_270m"] = interleaved(
            f"embedded Gemma 3 270M, {describe(work)}", methods(model, work), args.rounds, non_pad_tokens(work)
        )
    print()
    for model_name, t in results.items():
        print(f"RATIO capture_vs_floor[{model_name}] {paired_ratio(t, 'floor', 'capture'):.3f}")
        print(f"RATIO capture_vs_full[{model_name}] {paired_ratio(t, 'full', 'capture'):.3f}")
        print(f"RATIO middle_exit_vs_full[{model_name}] {paired_ratio(t, 'full', 'middle_exit'):.3f}")


if __name__ == "__main__":
    main()
