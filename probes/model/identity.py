"""Model identity: what stores and artifacts record about the model they came from, and how two are compared.

An identity names the family, sizes, a hash of the config and a **weight fingerprint**: a few evenly spaced
values of every parameter (4 per tensor, in name order), hashed. So an artifact fitted on a base model is
refused on a fine-tune with the same config. Loading the same weights in another dtype is accepted for
artifacts (the fingerprint's sample is compared within the coarser dtype's rounding); a store, whose values
depend on the dtype, must match exactly.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from probes.model.architectures import model_type, n_layers, unwrap

_PER_TENSOR = 4  # sampled values per parameter tensor
_KEPT = 64  # sampled values kept in the identity for comparisons across dtypes
_VOLATILE = ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "_attn_implementation")
# Fields that must agree; the name may differ (a local copy of the same weights).
IDENTITY_FIELDS = ("model_type", "n_layers", "hidden_size", "config_sha256")


def weight_sample(model: nn.Module) -> torch.Tensor:
    """``_PER_TENSOR`` evenly spaced values of every parameter, in parameter-name order, as float64 on the CPU
    (names as transformers gives them: a TransformerLens bridge's ``_original_component`` levels are dropped)."""
    values = []
    named = unwrap(model).named_parameters()
    for _, parameter in sorted(named, key=lambda item: item[0].replace("._original_component", "")):
        if parameter.is_meta or not parameter.numel():
            continue
        flat = parameter.detach().reshape(-1)
        index = (torch.arange(_PER_TENSOR, device=flat.device) * (flat.numel() - 1)) // (_PER_TENSOR - 1)
        values.append(flat[index].double().cpu())
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def _dtype(model: nn.Module) -> str:
    floating = [p.dtype for p in unwrap(model).parameters() if p.is_floating_point()]
    return str(floating[0]).removeprefix("torch.") if floating else "none"


def model_identity(model: nn.Module) -> dict:
    """What identifies a model in stores and artifacts: name, family, sizes, config hash, dtype and weights."""
    inner = unwrap(model)
    config = inner.config.to_dict()
    for volatile in _VOLATILE:
        config.pop(volatile, None)
    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    sample = weight_sample(inner)
    kept = sample[(torch.arange(min(_KEPT, len(sample))) * (len(sample) - 1)) // max(min(_KEPT, len(sample)) - 1, 1)]
    return {
        "name": str(inner.config.name_or_path),
        "model_type": model_type(inner),
        "n_layers": n_layers(inner),
        "hidden_size": int(inner.config.hidden_size),
        "config_sha256": config_digest,
        "dtype": _dtype(inner),
        "weights_sha256": hashlib.sha256(sample.float().numpy().tobytes()).hexdigest()[:16],
        "weights_sample": [float(f"{value:.7g}") for value in kept.tolist()],
    }


def _precision(dtype: str) -> float:
    """Relative rounding error of a dtype's mantissa (bfloat16 2**-8, float16 2**-11, float32 2**-24)."""
    return {"bfloat16": 2.0**-8, "float16": 2.0**-11}.get(dtype, 2.0**-24)


def identity_mismatches(expected: dict, actual: dict, *, exact: bool) -> list[str]:
    """What differs between the identity an artifact or store records (``expected``) and a model's (``actual``).

    ``exact``: the dtype and every weight must agree (stores). Otherwise another dtype of the same weights passes
    when every sampled weight agrees within twice the coarser dtype's rounding (artifacts).
    """
    problems = [
        f"{key}: recorded {expected.get(key)!r}, model has {actual[key]!r}"
        for key in IDENTITY_FIELDS
        if expected.get(key) != actual[key]
    ]
    if problems:
        return problems
    if "weights_sha256" not in expected:
        return ["weights: recorded without a weight fingerprint (made by xlalign < 0.2); create it again"]
    same_dtype = expected.get("dtype") == actual["dtype"]
    if exact and not same_dtype:
        return [f"dtype: recorded {expected.get('dtype')!r}, model has {actual['dtype']!r}"]
    if same_dtype or exact:
        if expected["weights_sha256"] != actual["weights_sha256"]:
            return ["weights: same config, different weights (another checkpoint or a fine-tune)"]
        return []
    recorded = torch.tensor(expected.get("weights_sample", []), dtype=torch.float64)
    present = torch.tensor(actual["weights_sample"], dtype=torch.float64)
    tolerance = 2 * max(_precision(expected.get("dtype", "")), _precision(actual["dtype"]))
    scale = torch.maximum(recorded.abs(), present.abs()).clamp(min=1e-12)
    if recorded.shape != present.shape or ((recorded - present).abs() / scale > tolerance).any():
        return [f"weights: different weights (compared across dtypes {expected.get('dtype')} / {actual['dtype']})"]
    return []
