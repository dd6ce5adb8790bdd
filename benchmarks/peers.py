"""xlalign's backends and the peers used directly, interleaved in one run per model.

Pooled (mean) capture of every layer's residual stream, against the decoder without its LM head (the floor):
xlalign's ``hf``, ``tl`` (a TransformerBridge's hook points) and ``nnsight`` (hooks run from nnsight traces)
backends, and the peers used directly, each pooled by hand: HF's ``output_hidden_states``, TransformerLens's
``run_with_cache``, and an nnsight trace that ``.save()``s every layer's output. Steered greedy generation (one
AddVector on the middle layer) through each backend and through steering-vectors (the same vector added at the
same block) against plain ``generate`` of the same model (for ``tl``: of the bridged copy, whose attention is
eager). The run ends with ``RATIO`` lines (throughput ratios for
capture, time ratios for generation; :func:`benchmarks.timing.paired_ratio`):

- ``peers_hf_vs_floor``, ``peers_hf_vs_<peer>`` (targets >= 0.97 and >= 1: at least as fast as every peer);
- ``peers_tl_vs_run_with_cache``, ``peers_nnsight_vs_nnsight_save``: each backend against its peer used
  directly (target >= 0.9);
- ``peers_steered_vs_plain[<model>,<backend>]`` (target <= 1.03 for hf), also for ``steering_vectors``;
- ``peers_hf_steered_vs_steering_vectors`` (a time ratio; target <= 1: at least as fast as the peer).
"""

from __future__ import annotations

import argparse

import torch
from steering_vectors import SteeringVector

from benchmarks.capture import methods as capture_benchmark
from benchmarks.capture import random_llama
from benchmarks.timing import describe, greedy_options, interleaved, make_batches, non_pad_tokens, paired_ratio
from probes.capture import capture_batches
from probes.capture.passes import generate
from probes.data import demo_corpus
from probes.model import Site, load_model, n_layers, nnsight_model, transformer_bridge
from probes.model.tiny import demo_tokenizer
from steer.apply import steer
from steer.interventions import AddVector


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def capture_methods(model, bridge, lm, work) -> dict:
    layers = n_layers(model)
    every_resid = [Site(layer, "resid") for layer in range(layers + 1)]
    names = {"blocks.0.hook_in", *(f"blocks.{layer}.hook_out" for layer in range(layers))}

    def hidden_states():
        with torch.inference_mode():
            for batch in work:
                out = model.base_model(
                    **batch.model_inputs(model.base_model), use_cache=False, output_hidden_states=True
                )
                [masked_mean(h, batch.attention_mask) for h in out.hidden_states]

    def run_with_cache():
        with torch.inference_mode():
            for batch in work:
                _, cache = bridge.run_with_cache(
                    batch.input_ids, attention_mask=batch.attention_mask, names_filter=lambda name: name in names
                )
                [masked_mean(cache[name], batch.attention_mask) for name in names]

    def nnsight_save():
        with torch.inference_mode():
            for batch in work:
                saved = []  # the trace body runs elsewhere: what it keeps goes into an outer container
                with lm.trace(**batch.model_inputs(lm._module)):
                    saved.append(lm.model.layers[0].input.save())
                    for layer in lm.model.layers:
                        saved.append(layer.output.save())
                [masked_mean(value, batch.attention_mask) for value in saved]

    return {
        "floor": capture_benchmark(model, work)["floor"],
        "hf": lambda: capture_batches(model, work, every_resid),
        "tl": lambda: capture_batches(bridge, work, every_resid),
        "nnsight": lambda: capture_batches(lm, work, every_resid),
        "hidden_states": hidden_states,
        "run_with_cache": run_with_cache,
        "nnsight_save": nnsight_save,
    }


def generate_methods(model, bridge, lm, tokenizer, new_tokens: int) -> dict:
    texts = demo_corpus().texts("deu")[:8]
    options = greedy_options(tokenizer, texts, new_tokens)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.1
    plan = [AddVector({n_layers(model) // 2: vector})]

    def steered(network):
        def run():
            with steer(network, plan):
                return generate(network, **options)

        return run

    def steering_vectors():  # the peer: block (middle - 1)'s output is xlalign's resid at the middle layer
        with SteeringVector({n_layers(model) // 2 - 1: vector}, layer_type="decoder_block").apply(model):
            return model.generate(**options)

    return {
        "plain_hf": lambda: generate(model, **options),
        "steered_hf": steered(model),
        "plain_tl": lambda: generate(bridge, **options),
        "steered_tl": steered(bridge),
        "plain_nnsight": lambda: lm._module.generate(**options),
        "steered_nnsight": steered(lm),
        "steering_vectors": steering_vectors,
    }


def bench(name: str, model, tokenizer, rounds: int, new_tokens: int) -> None:
    bridge, lm = transformer_bridge(model, tokenizer), nnsight_model(model, tokenizer)
    work = make_batches(model.config.vocab_size, 1)
    times = interleaved(
        f"{name} capture, {describe(work)}", capture_methods(model, bridge, lm, work), rounds, non_pad_tokens(work)
    )
    generation = interleaved(
        f"{name} generate, 8 prompts, {new_tokens} new tokens",
        generate_methods(model, bridge, lm, tokenizer, new_tokens),
        rounds,
    )
    print()
    for peer in ("floor", "hidden_states", "run_with_cache", "nnsight_save"):
        print(f"RATIO peers_hf_vs_{peer}[{name}] {paired_ratio(times, peer, 'hf'):.3f}")
    print(f"RATIO peers_tl_vs_run_with_cache[{name}] {paired_ratio(times, 'run_with_cache', 'tl'):.3f}")
    print(f"RATIO peers_nnsight_vs_nnsight_save[{name}] {paired_ratio(times, 'nnsight_save', 'nnsight'):.3f}")
    for backend in ("hf", "tl", "nnsight"):
        ratio = paired_ratio(generation, f"steered_{backend}", f"plain_{backend}")
        print(f"RATIO peers_steered_vs_plain[{name},{backend}] {ratio:.3f}")
    print(
        f"RATIO peers_steered_vs_plain[{name},steering_vectors] "
        f"{paired_ratio(generation, 'steering_vectors', 'plain_hf'):.3f}"
    )
    print(
        f"RATIO peers_hf_steered_vs_steering_vectors[{name}] "
        f"{paired_ratio(generation, 'steered_hf', 'steering_vectors'):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--skip-default", action="store_true", help="only the random Llama-style model")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    tokenizer = demo_tokenizer()
    bench("random_llama", random_llama(), tokenizer, args.rounds, args.new_tokens)
    if not args.skip_default:
        bench("gemma3_270m", *load_model("default"), args.rounds, args.new_tokens)


if __name__ == "__main__":
    main()
