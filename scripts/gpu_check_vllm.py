"""The prepared vLLM check for a GPU machine with vLLM installed (or ``--device cpu`` with vLLM's CPU build).

Saves a random-weight checkpoint (``--size large``: Llama-style, about 1.1B parameters; ``small``: the tiny test
model with head_dim 32), starts xlalign's vLLM engine on it with tensor parallel 1 and, where the machine has two
GPUs, 2, and prints::

    CHECK vllm_tokens_equal_hf[tp=N] K/M      steered greedy tokens equal to the hf backend's, per prompt
    CHECK vllm_cuda_graphs_refused True       enforce_eager=False is refused before anything runs
    RATIO vllm_steered_vs_plain[tp=N] R       plain time / steered time (throughput), interleaved rounds
    RATE vllm_tokens_per_second[tp=N] P S     plain and steered generated tokens per second

Run from a checkout (``.venv-vllm/bin/python scripts/gpu_check_vllm.py --device cpu --size small``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, without installing

import torch  # noqa: E402

from benchmarks.timing import interleaved, paired_ratio  # noqa: E402
from probes.data import demo_corpus  # noqa: E402
from probes.model import n_layers, random_model  # noqa: E402
from steer.apply import steer  # noqa: E402
from steer.errors import EngineError  # noqa: E402
from steer.interventions import AddVector  # noqa: E402

LARGE = dict(
    hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632
)


def hf_tokens(model, ids: list[int], plan, steps: int) -> list[int]:
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    with steer(model, plan):
        return model.generate(prompt, max_new_tokens=steps, do_sample=False)[0, len(ids) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="large", choices=("large", "small"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from vllm import SamplingParams

    from steer.vllm import vllm_engine

    sizes = LARGE if args.size == "large" else dict(hidden_size=128)
    model, tokenizer = random_model("llama", **sizes)
    model = model.to(args.device)
    texts = demo_corpus().texts("deu")[: args.prompts]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    width, middle = model.config.hidden_size, n_layers(model) // 2
    plan = AddVector({middle: torch.randn(width, generator=torch.Generator().manual_seed(0)) * 4})
    exact = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, min_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        try:
            vllm_engine(folder, enforce_eager=False)
            refused = False
        except EngineError:
            refused = True
        print(f"CHECK vllm_cuda_graphs_refused {refused}")
        gpus = torch.cuda.device_count() if args.device == "cuda" else 1
        for tp in (1, 2) if gpus >= 2 else (1,):
            engine = vllm_engine(folder, dtype="float32", tensor_parallel_size=tp, max_model_len=1024, seed=0)
            try:
                engine.install(plan, "shift")
                got = engine.generate(prompts[:8], plans="shift", max_tokens=16)
                same = sum(a == hf_tokens(model, ids, plan, 16) for a, ids in zip(got, prompts[:8]))
                print(f"CHECK vllm_tokens_equal_hf[tp={tp}] {same}/{len(got)}")
                runs = {
                    "plain": lambda: engine.generate(prompts, sampling=exact),
                    "steered": lambda: engine.generate(prompts, plans="shift", sampling=exact),
                }
                times = interleaved(f"vLLM tp={tp}", runs, args.rounds)
                print(f"RATIO vllm_steered_vs_plain[tp={tp}] {paired_ratio(times, 'plain', 'steered'):.3f}")
                made = len(prompts) * args.new_tokens
                rates = [made / min(times[key]) for key in ("plain", "steered")]
                print(f"RATE vllm_tokens_per_second[tp={tp}] {rates[0]:.0f} {rates[1]:.0f}")
            finally:
                engine.shutdown()


if __name__ == "__main__":
    main()
