"""Engines shared by the vLLM tests (vLLM's defaults otherwise: prefix caching on) (each starts in seconds for a tiny model, about a minute for Gemma 3 270M).

These tests run in the second environment (``.venv-vllm``: vLLM's CPU build needs transformers < 5.20, the main
environment pins 5.23); ``make test`` runs them after the main suite. The ``hf`` references run in the same
process, on the same checkpoint, in float32.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine (vLLM's default takes most RAM)

from probes.model.tiny import random_model  # noqa: E402
from steer import steer  # noqa: E402

FAMILIES = ("llama", "qwen2", "mixtral")  # two dense families and one MoE
ENGINE_ARGS = dict(dtype="float32", max_model_len=512, seed=0)


def tiny(family: str):
    """A tiny random model vLLM's CPU attention runs (head_dim 32) and its tokenizer."""
    return random_model(family, hidden_size=128)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    made = {}
    for family in FAMILIES:
        model, tokenizer = tiny(family)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        made[family] = (str(path), model, tokenizer)
    return made


@pytest.fixture(scope="session")
def engines(checkpoints):
    """One engine per tiny family, started on first use and shut down at the end of the session."""
    from steer.vllm import vllm_engine

    started = {}

    def get(family: str):
        if family not in started:
            # The Llama engine prefills every prompt in one pass, as detector gating needs; the others chunk.
            chunked = {"enable_chunked_prefill": False} if family == "llama" else {}
            started[family] = vllm_engine(checkpoints[family][0], **ENGINE_ARGS, **chunked)
        return started[family]

    yield get
    for engine in started.values():
        engine.shutdown()


def hf_tokens(model, ids: list[int], plan, steps: int, languages=None) -> list[int]:
    """Greedy tokens of the ``hf`` backend for one unpadded prompt, steered by ``plan`` (None: plain)."""
    prompt = torch.tensor([ids])
    if plan is None:
        out = model.generate(prompt, max_new_tokens=steps, do_sample=False)
    else:
        with steer(model, plan, languages=languages):
            out = model.generate(prompt, max_new_tokens=steps, do_sample=False)
    return out[0, len(ids) :].tolist()
