"""Shared fixtures: tiny random-weight models of every supported family, and the real-data paths."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from a second thread, and on a loaded 2-core machine OpenMP threads that wait on
# each other slow them down tenfold.
torch.set_num_threads(1)

# The shared evaluation data lies beside the repository; XLALIGN_NTREX points elsewhere.
NTREX = Path(os.environ.get("XLALIGN_NTREX") or Path(__file__).resolve().parents[2] / "shared" / "data" / "ntrex")

# Sentences of different lengths and scripts, so batches really pad.
TEXTS = [
    "The cat sleeps.",
    "Die Katze schläft auf dem warmen Sofa neben dem Fenster.",
    "猫は寝ています。",
    "Кошка спит на диване, а собака играет во дворе с мячом.",
    "القطة نائمة.",
    "A",
    "बिल्ली सो रही है और बाहर बारिश हो रही है।",
]


@functools.lru_cache(maxsize=None)
def tiny(family: str):
    """The seeded tiny model of ``family`` and its tokenizer (built once per session; tests must not edit it)."""
    from probes.model import random_model

    return random_model(family)


def ntrex_path() -> Path:
    if not NTREX.is_dir():
        pytest.fail(f"the NTREX evaluation data is expected at {NTREX} (../shared/data/ntrex next to the repo)")
    return NTREX


def activations(by_layer: dict, component: str = "resid", model: dict | None = None, pooling: str | None = "mean"):
    """In-memory Activations from ``{layer: {language: (n, *shape)}}`` (synthetic data for finders and metrics)."""
    from probes.analysis import Activations
    from probes.model import Site

    data = {(Site(layer, component), lang): x for layer, by_lang in by_layer.items() for lang, x in by_lang.items()}
    return Activations(data, model=model, pooling=pooling)


# Shared helpers of the steering, capture and backend tests.
FAMILIES = ("llama", "gemma3_text", "qwen2", "mixtral")
BACKENDS = ("tl", "nnsight")


@functools.lru_cache(maxsize=None)
def through(backend: str, family: str):
    """The tiny model of ``family`` inside ``backend``'s wrapper (made on a copy; built once per session)."""
    from probes.model import resolve_model

    model, tokenizer = tiny(family)
    return resolve_model(model, tokenizer, backend=backend)[0]


def every_site(model) -> list:
    """Every site the model has (every component at every layer it exists at)."""
    from probes.model import COMPONENTS, Site, SiteError, n_layers, site_shape

    sites = []
    for layer in range(n_layers(model) + 1):
        for component in COMPONENTS:
            try:
                site = Site(layer, component)
                site_shape(model, site)
            except SiteError:
                continue
            sites.append(site)
    return sites


def left_padded(tokenizer, texts):
    """``texts`` left-padded by the tokenizer itself (independent of xlalign's batching), in text order."""
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left")
    return encoded["input_ids"], encoded["attention_mask"]


def prompt_batch(tokenizer, texts, side="left"):
    """``texts`` as one xlalign batch padded on ``side``, rows back in text order."""
    from probes.capture import Tokenization, batches

    (batch,) = batches(tokenizer, texts, Tokenization(batch_size=len(texts)), padding_side=side)
    order = batch.rows.argsort()
    return batch.input_ids[order], batch.attention_mask[order]


def hook_count(model) -> int:
    """Forward hooks and pre-hooks on every module of ``model`` (none may remain after steering)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
