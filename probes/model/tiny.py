"""Tiny seeded random-weight models of every supported family, with a byte-level BPE tokenizer trained on the
bundled demo corpus: what the tests and benchmarks use (``load_model("random:llama")``)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from probes.errors import XlalignError

if TYPE_CHECKING:
    import torch


class ModelError(XlalignError):
    """A model spec that cannot be loaded, or a model object xlalign cannot use."""


# --- tiny random-weight models -------------------------------------------------------------------------

# Small sizes that still exercise grouped-query attention, several heads and gated MLPs.
_TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)

_TINY_BY_FAMILY: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    "olmo2": {},
    "bloom": {"hidden_size": 64, "n_layer": 4, "n_head": 4},
    "xglm": {"d_model": 64, "num_layers": 4, "attention_heads": 4, "ffn_dim": 128},
    "gpt2": {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_inner": 128, "n_positions": 256},
    # Mixture-of-experts: 8 experts of width 32, top-2. Qwen2-MoE's last and DeepSeek-V3's first layer are
    # dense, so code meets MoE models with unrouted layers; Qwen3-MoE renormalises its top-k, Qwen2-MoE not.
    "mixtral": {"intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    "olmoe": {"intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "mlp_only_layers": [3],
    },
    "qwen3_moe": {
        "head_dim": 16,
        "moe_intermediate_size": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
    },
    "gpt_oss": {
        "head_dim": 16,
        "intermediate_size": 32,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": 8,
    },
    "granitemoe": {"intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    "phimoe": {"intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    "deepseek_v3": {
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "n_shared_experts": 1,
        "kv_lora_rank": 16,
        "q_lora_rank": 32,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
        "head_dim": 8,
    },
}
MOE_FAMILIES = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "gpt_oss", "granitemoe", "phimoe", "deepseek_v3")
# Dense families have every component; MoE families have a router and no per-neuron MLP sites.
RANDOM_FAMILIES = tuple(family for family in _TINY_BY_FAMILY if family not in MOE_FAMILIES)
_ALIASES = {"gemma3": "gemma3_text"}


def random_model(family: str, *, dtype: torch.dtype | None = None, seed: int = 0, **overrides):
    """A seeded tiny random-weight model of ``family`` (a transformers ``model_type``) and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family = _ALIASES.get(family, family)
    if family not in _TINY_BY_FAMILY:
        raise ModelError(f"no tiny random model for family {family!r}; available: {', '.join(_TINY_BY_FAMILY)}")
    tokenizer = demo_tokenizer()
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    sizes = _TINY if family not in ("bloom", "xglm", "gpt2") else {}
    config = AutoConfig.for_model(family, **{**sizes, **_TINY_BY_FAMILY[family], **special, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
        for module in model.modules():  # DeepSeek-V3's selection bias starts at zero: make it matter
            if isinstance(getattr(module, "e_score_correction_bias", None), torch.Tensor):
                module.e_score_correction_bias.normal_(0.0, 0.02)
    model.config.name_or_path = f"random:{family}"
    return model.eval(), tokenizer


@functools.lru_cache(maxsize=1)
def _trained_demo_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from probes.data import demo_corpus

    corpus = demo_corpus()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((text for lang in corpus.languages for text in corpus.texts(lang)), trainer)
    return tokenizer.to_str()


def demo_tokenizer():
    """A byte-level BPE tokenizer (1024 tokens) trained on the demo corpus; prepends ``<bos>`` like Llama."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_demo_tokenizer_json())
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="right"
    )
