"""Steered generate (one AddVector, one ApplyMap) against plain generate, interleaved in one run.

Every round times plain and steered greedy generation of the same left-padded batch, alternating which goes
first (:func:`benchmarks.timing.interleaved`); the run ends with ``RATIO steered_generate_vs_plain[<model>]
<value>`` (steered time / plain time, :func:`benchmarks.timing.paired_ratio`; target <= 1.03). Run as a module from the repository root
(``python -m benchmarks.steer``) so that ``steer`` names the package, not this file.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import greedy_options, interleaved, paired_ratio
from probes.data import demo_corpus
from probes.model import load_model, n_layers
from steer.apply import steer
from steer.interventions import AddVector, ApplyMap
from steer.schedule import Schedule


def plan_for(model) -> list:
    width, middle = model.config.hidden_size, n_layers(model) // 2
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(width, generator=generator) * 0.1
    matrix = torch.eye(width) + 0.01 * torch.randn(width, width, generator=generator)
    return [
        (AddVector({middle: vector}), Schedule()),
        (ApplyMap({middle + 1: matrix}, sigma=0.5, rule="interpolate"), Schedule(prefill="last", decode="none")),
    ]


def bench(name: str, model, tokenizer, rounds: int, new_tokens: int) -> float:
    texts = demo_corpus().texts("deu")[:8]
    options = greedy_options(tokenizer, texts, new_tokens)
    plan = plan_for(model)

    def plain():
        return model.generate(**options)

    def steered():
        with steer(model, plan):
            return model.generate(**options)

    name = f"{name}: batch {tuple(options['input_ids'].shape)}, {new_tokens} new tokens"
    times = interleaved(name, {"plain": plain, "steered": steered}, rounds)
    return paired_ratio(times, "steered", "plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--model", default="default", help="a load_model spec (default: the embedded Gemma 3 270M)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    ratio = bench(args.model, *load_model(args.model), args.rounds, args.new_tokens)
    print(f"\nRATIO steered_generate_vs_plain[{args.model}] {ratio:.3f}")


if __name__ == "__main__":
    main()
