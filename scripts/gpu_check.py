"""The prepared GPU check: one command, a few minutes, for a session lent a GPU machine (or ``--device cpu``).

The device machine reaches no registry and takes little data, so the models are random-weight ones built from
configs: a Llama-style model of about 1.1B parameters (``--size small``: the tiny test model) and a random
Mixtral-style MoE, in bfloat16 on a GPU (``--dtype``). Run from a checkout, nothing installed::

    python scripts/gpu_check.py                      # the GPU: CUDA, bfloat16
    python scripts/gpu_check.py --device cpu --size small --rounds 2

Prints ``RATIO`` lines (interleaved rounds, :mod:`benchmarks.timing`) and ``CHECK`` lines:

- ``capture_vs_floor[model]``: pooled ``resid`` of every layer vs the decoder without its LM head (throughput);
- ``steered_generate_vs_plain[model]``: one AddVector inside greedy ``generate`` vs plain (time);
- ``batched_vs_one_by_one_max_diff[model]``: max |difference| of pooled vectors, batched vs one text at a time,
  relative to the vectors' largest magnitude (bf16 rounding differs with the batch shape);
- ``cached_equals_uncached[model]``: steered greedy tokens with and without KV cache are identical;
- ``capture_tokens_per_second[model]``: the pooled capture's throughput.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, without installing

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM  # noqa: E402

from benchmarks.capture import methods as capture_methods  # noqa: E402
from benchmarks.timing import greedy_options, interleaved, paired_ratio  # noqa: E402
from probes.capture import Tokenization, batches, capture  # noqa: E402
from probes.data import demo_corpus  # noqa: E402
from probes.model import Site, n_layers, random_model  # noqa: E402
from probes.model.loading import pick_device, pick_dtype  # noqa: E402
from probes.model.tiny import demo_tokenizer  # noqa: E402
from steer.apply import steer  # noqa: E402
from steer.interventions import AddVector  # noqa: E402

LARGE = {  # about 1.1B parameters (TinyLlama's shape) and a 0.9B-parameter MoE, both with the demo vocabulary
    "llama_1b": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            hidden_size=2048,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            intermediate_size=5632,
        ),
    ),
    "mixtral_moe": (
        MixtralConfig,
        MixtralForCausalLM,
        dict(
            hidden_size=1024,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=4,
            intermediate_size=2048,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
    ),
}


def build(name: str, size: str, tokenizer, device: str, dtype: torch.dtype) -> torch.nn.Module:
    if size == "small":
        model, _ = random_model({"llama_1b": "llama", "mixtral_moe": "mixtral"}[name], dtype=dtype)
    else:
        config_type, model_type, shape = LARGE[name]
        config = config_type(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **shape,
        )
        torch.manual_seed(0)
        with torch.device(device):
            model = model_type(config).to(dtype)
    return model.to(device).eval()


def synchronised(fn, device: str):
    def run():
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return run


def check(name: str, model, tokenizer, device: str, rounds: int, batch_size: int, new_tokens: int) -> None:
    texts = [text for lang in ("eng", "deu", "jpn", "arb") for text in demo_corpus().texts(lang)][: 4 * batch_size]
    work = batches(tokenizer, texts, Tokenization(batch_size=batch_size), device=device)
    tokens = sum(int(b.attention_mask.sum()) for b in work)
    runs = {
        key: synchronised(fn, device) for key, fn in capture_methods(model, work).items() if key in ("floor", "capture")
    }
    times = interleaved(f"{name}: pooled resid of every layer, {len(texts)} texts", runs, rounds, tokens)
    print(f"RATIO capture_vs_floor[{name}] {paired_ratio(times, 'floor', 'capture'):.3f}")
    seconds = sorted(times["capture"])[len(times["capture"]) // 2]
    print(f"RATIO capture_tokens_per_second[{name}] {tokens / seconds:.0f}")

    sites = [Site(layer, "resid") for layer in range(n_layers(model) + 1)]
    together = capture(model, tokenizer, texts[:8], sites, tokenization=Tokenization(batch_size=8))
    alone = capture(model, tokenizer, texts[:8], sites, tokenization=Tokenization(batch_size=1))
    relative = max(float((together[s] - alone[s]).abs().max() / together[s].abs().max()) for s in sites)
    print(f"RATIO batched_vs_one_by_one_max_diff[{name}] {relative:.2e}")

    options = greedy_options(tokenizer, texts[:8], new_tokens, device)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 4.0
    plan = [AddVector({n_layers(model) // 2: vector})]

    def steered(**extra):
        with steer(model, plan):
            return model.generate(**options, **extra)

    generation = interleaved(
        f"{name}: greedy generate, 8 prompts, {new_tokens} new tokens",
        {"plain": synchronised(lambda: model.generate(**options), device), "steered": synchronised(steered, device)},
        rounds,
    )
    print(f"RATIO steered_generate_vs_plain[{name}] {paired_ratio(generation, 'steered', 'plain'):.3f}")
    same = torch.equal(steered(use_cache=True), steered(use_cache=False))
    print(f"CHECK cached_equals_uncached[{name}] {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--size", default="large", choices=("large", "small"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled(False): a caller (the test suite) keeps its own grad mode
        run(args)


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    started = time.perf_counter()
    print(
        f"gpu_check: torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if device.startswith('cuda') else ''}, {dtype}"
    )
    tokenizer = demo_tokenizer()
    for name in LARGE:
        model = build(name, args.size, tokenizer, device, dtype)
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
        check(name, model, tokenizer, device, args.rounds, args.batch_size, args.new_tokens)
        del model
    print(f"\ngpu_check: done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
