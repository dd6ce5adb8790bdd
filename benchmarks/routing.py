"""Routing capture overhead against a plain forward pass of a random-weight MoE model, interleaved in one run.

Every round times each method once over the same right-padded batches, in rotating order
(:func:`benchmarks.timing.interleaved`); the run ends with ``RATIO`` lines (throughput of the method over that
of the plain forward, :func:`benchmarks.timing.paired_ratio`; 1.0 = free):

- routing_capture_vs_forward: :func:`probes.capture.trace_batches` (logits, probabilities, top-k ids and
  weights of every non-pad token at every layer) vs the decoder stack without hooks or LM head;
- router_pooled_vs_forward: mean-pooled ``router`` sites of every layer through :func:`probes.capture.capture_batches`
  (what the ActivationStore holds) vs the same plain forward.
"""

from __future__ import annotations

import argparse

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from benchmarks.timing import describe, interleaved, make_batches, non_pad_tokens, paired_ratio
from probes.capture import capture_batches, trace_batches
from probes.model import Site, router_layers


def random_mixtral() -> torch.nn.Module:
    config = MixtralConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1024,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=32000,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def methods(model, work):
    routers = [Site(layer, "router") for layer in router_layers(model)]

    def forward():
        with torch.inference_mode():
            for batch in work:
                model.base_model(**batch.model_inputs(model.base_model), use_cache=False)

    return {
        "forward": forward,
        "routing_capture": lambda: trace_batches(model, work),
        "router_pooled": lambda: capture_batches(model, work, routers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = random_mixtral()
    work = make_batches(32000, args.batches)
    name = f"random Mixtral-style (hidden 512, 8 layers, 8 experts top-2), {describe(work)}"
    t = interleaved(name, methods(model, work), args.rounds, non_pad_tokens(work))
    print()
    print(f"RATIO router_pooled_vs_forward {paired_ratio(t, 'forward', 'router_pooled'):.3f}")
    print(f"RATIO routing_capture_vs_forward {paired_ratio(t, 'forward', 'routing_capture'):.3f}")


if __name__ == "__main__":
    main()
