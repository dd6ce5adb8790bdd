"""The vLLM engine against plain vLLM and against the hf backend, interleaved in one run (in ``.venv-vllm``).

Three paired ratios on the same prompts (NTREX German sentences where ``XLALIGN_NTREX`` or the tests find them,
else the demo corpus), each from rounds that alternate which run goes first (:func:`benchmarks.timing.interleaved`):

- ``RATIO vllm_steered_vs_plain_throughput``: plain time / steered time of greedy generation with one
  ``AddVector`` at a middle layer (target >= 0.90 on CPU in eager mode);
- ``RATIO vllm_vs_hf_steered_speedup``: the hf backend's steered ``generate`` (left-padded batch) time / vLLM's
  steered time, the same plan and prompts (target: at least plain vLLM's speedup over hf, also printed as
  ``RATIO vllm_vs_hf_plain_speedup``); the greedy tokens of both are compared and the count of equal prompts
  printed;
- ``RATIO vllm_capture_vs_prefill``: the time of one-token generation (the prompt pass) / the time of a capture
  of two residual sites through the engine (1.0: capture is free).

Run from the repository root: ``.venv-vllm/bin/python -m benchmarks.vllm`` (``make bench`` does).
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.timing import greedy_options, interleaved, paired_ratio
from probes.data import demo_corpus
from probes.model import Site, load_model, n_layers
from steer.apply import steer
from steer.interventions import AddVector


def prompts(n: int) -> list[str]:
    from pathlib import Path

    from probes.data import read_ntrex

    folder = os.environ.get("XLALIGN_NTREX") or str(Path(__file__).resolve().parents[2] / "shared/data/ntrex")
    if Path(folder).is_dir():
        return list(read_ntrex(folder).texts("deu")[:n])
    return demo_corpus().texts("deu")[:n]


def hf_generate(model, tokenizer, texts: list[str], plan, new_tokens: int) -> list[list[int]]:
    options = greedy_options(tokenizer, texts, new_tokens)
    if plan is None:
        out = model.generate(**options)
    else:
        with steer(model, plan):
            out = model.generate(**options)
    width = options["input_ids"].shape[1]
    return [row[width:].tolist() for row in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the (slow) comparison with hf")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from steer.vllm import vllm_engine

    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    model, tokenizer = load_model("default", dtype="float32")
    middle = n_layers(model) // 2
    with torch.inference_mode():
        probe = model(**tokenizer("Das ist ein Satz.", return_tensors="pt"), output_hidden_states=True)
    scale = probe.hidden_states[middle][0].norm(dim=-1).median()
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    plan = AddVector({middle: direction / direction.norm() * scale * 0.5})
    texts = prompts(args.prompts)
    engine = vllm_engine("default", dtype="float32", max_model_len=1024, seed=0)
    try:
        engine.install(plan, "shift")
        new = args.new_tokens

        def plain():
            return engine.generate(texts, sampling=_exact(new))

        def steered():
            return engine.generate(texts, plans="shift", sampling=_exact(new))

        times = interleaved(f"vLLM, {len(texts)} prompts x {new} tokens", {"plain": plain, "steered": steered}, 5)
        print(f"RATIO vllm_steered_vs_plain_throughput {paired_ratio(times, 'plain', 'steered'):.3f}")

        def hf_steered():
            return hf_generate(model, tokenizer, texts, plan, new)

        def hf_plain():
            return hf_generate(model, tokenizer, texts, None, new)

        runs = {"vllm_plain": plain, "vllm_steered": steered, "hf_plain": hf_plain, "hf_steered": hf_steered}
        times = interleaved("vLLM vs hf generate", runs, args.rounds)
        print(f"RATIO vllm_vs_hf_plain_speedup {paired_ratio(times, 'hf_plain', 'vllm_plain'):.2f}")
        print(f"RATIO vllm_vs_hf_steered_speedup {paired_ratio(times, 'hf_steered', 'vllm_steered'):.2f}")
        same = sum(a == b for a, b in zip(steered(), hf_steered()))
        print(f"steered greedy tokens equal to hf's for {same} of {len(texts)} prompts")

        sites = [Site(middle, "resid"), Site(n_layers(model), "resid")]
        times = interleaved(
            "capture vs prefill",
            {"prefill": lambda: engine.generate(texts, max_tokens=1), "capture": lambda: engine.capture(texts, sites)},
            5,
        )
        print(f"RATIO vllm_capture_vs_prefill {paired_ratio(times, 'prefill', 'capture'):.3f}")
    finally:
        engine.shutdown()


def _exact(tokens: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens)


if __name__ == "__main__":
    main()
