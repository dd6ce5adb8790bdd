"""The ``steer`` job: greedy continuations of prompts without and with saved artifacts applied."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from probes.artifacts import Eraser, LinearMap, NeuronSet, ShiftVector, load_artifact
from probes.capture import Tokenization
from probes.data import normalize_language
from probes.model import Loading
from steer.apply import steer as steering
from steer.convert import to_intervention
from steer.evaluate import continuations
from steer.incline import incline
from probes.errors import notice
from xlalign.errors import JobError
from xlalign.loading import takes_loading
from xlalign.jobs import open_model


@takes_loading
def steer(
    artifact: str | os.PathLike | Sequence[str | os.PathLike],
    prompts: Sequence[str],
    *,
    model="default",
    tokenizer=None,
    language: str | None = None,
    strength: float | None = None,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 30,
    tokenization: Tokenization = Tokenization(),
    loading: Loading = Loading(),
) -> pd.DataFrame:
    """Greedy continuations of ``prompts`` without and with ``artifact`` applied (several: all at once, e.g. the
    AP experts of each linear component; ``layers``: default, the artifact's recommended layers), as a table
    ``prompt, off, on``. ``strength`` (default 1) scales shift vectors, maps and erasers; ``language`` picks a
    NeuronSet's language and must otherwise be the artifact's own. An INCLINE map is applied as its released
    code does (:func:`steer.incline.incline`: every layer of the map unless ``layers``, the last prompt token,
    targets from a clean pass, ``sigma = strength``)."""
    paths = [Path(artifact)] if isinstance(artifact, (str, os.PathLike)) else [Path(path) for path in artifact]
    for path in paths:
        if path.is_dir():
            inside = sorted(p.name for p in path.glob("*.safetensors"))
            raise JobError(
                f"--artifact {path} is a directory; name the artifact files in it"
                + (f" ({', '.join(inside[:6])})" if inside else " (it holds no .safetensors file)")
            )
    language = None if language is None else normalize_language(language)
    if strength is not None and not math.isfinite(strength):
        raise JobError(f"--strength must be a finite number, got {strength}")
    if loading.backend == "vllm":
        return _steer_in_vllm(paths, prompts, model, language, strength, layers, max_new_tokens, tokenization, loading)
    network, tokenizer = open_model(model, tokenizer, loading)

    def apply_incline(found: LinearMap, alpha: float):
        return incline(network, tokenizer, prompts, found, alpha, layers=layers, tokenization=tokenization)

    found = [(path, load_artifact(path, model=network)) for path in paths]
    plan = plan_of(found, language, strength, layers, apply_incline)
    off = continuations(network, tokenizer, prompts, max_new_tokens=max_new_tokens, tokenization=tokenization)
    with steering(network, plan):
        on = continuations(network, tokenizer, prompts, max_new_tokens=max_new_tokens, tokenization=tokenization)
    return pd.DataFrame({"prompt": list(prompts), "off": off, "on": on})


def plan_of(found, language: str | None, strength: float | None, layers, apply_incline) -> list:
    """The plan of loaded artifacts (``found``: (path, artifact) pairs); an INCLINE map through ``apply_incline``."""
    plan = []
    for path, found in found:
        if isinstance(found, NeuronSet):
            if layers is not None or strength is not None:
                raise JobError(
                    f"{path}: --layers and --strength apply to shift vectors, maps and erasers; a NeuronSet "
                    "is applied where its units are, zeroed (LAPE) or set to their median response (AP)"
                )
        elif language is not None and language != getattr(found, "language", None):
            fitted = f"fitted for {found.language!r}" if hasattr(found, "language") else "not fitted for one language"
            raise JobError(
                f"{path} is a {found.KIND} {fitted}, but --language names {language!r}: omit --language, "
                f"or use an artifact fitted for {language!r}"
            )
        alpha = 1.0 if strength is None else strength
        if isinstance(found, LinearMap) and found.method == "incline":
            plan.append(apply_incline(found, alpha))
        else:
            plan.append(to_intervention(found, strength=alpha, language=language, layers=layers))
    return plan


def _steer_in_vllm(paths, prompts, model, language, strength, layers, max_new_tokens, tokenization, loading):
    """``steer`` with generation in a vLLM engine (``--backend vllm``): the same plan, the same greedy tokens."""
    from steer.vllm import vllm_engine

    if not isinstance(model, (str, os.PathLike)) or loading.device_map is not None:
        raise JobError("--backend vllm loads the model itself: give --model a spec (a directory, a hub id, default)")
    loaded = [(path, load_artifact(path)) for path in paths]  # a bad file fails before the engine starts
    engine = vllm_engine(str(model), dtype=loading.dtype)
    try:
        found = [(path, _fits_engine(path, artifact, engine)) for path, artifact in loaded]
        plan = plan_of(found, language, strength, layers, lambda fitted, alpha: engine.incline(
            prompts, fitted, alpha, layers=layers, tokenization=tokenization))  # fmt: skip
        engine.install(plan, "steer")
        ids = tokenization.encode(engine.tokenizer, prompts)
        decode = engine.tokenizer.batch_decode
        off = decode(engine.generate(ids, max_tokens=max_new_tokens), skip_special_tokens=True)
        on = decode(engine.generate(ids, plans="steer", max_tokens=max_new_tokens), skip_special_tokens=True)
    finally:
        engine.shutdown()
    return pd.DataFrame({"prompt": list(prompts), "off": off, "on": on})


def _fits_engine(path, artifact, engine):
    """``artifact`` if it was made on this engine's model family and sizes (vLLM holds no transformers model whose
    weights xlalign could fingerprint: that part of the identity check is left out, and said so)."""
    config = engine.llm.llm_engine.model_config.hf_text_config
    recorded = getattr(artifact, "model", {}) or {}
    actual = {"model_type": config.model_type, "n_layers": config.num_hidden_layers, "hidden_size": config.hidden_size}
    wrong = [f"{key}: recorded {recorded.get(key)!r}, model has {value!r}" for key, value in actual.items()
             if recorded.get(key) != value]  # fmt: skip
    if wrong:
        raise JobError(f"{path} was made on another model ({'; '.join(wrong)})")
    notice(f"{path}: checked against the vLLM model's family and sizes; its weights cannot be fingerprinted there")
    return artifact


def describe_artifact(path: str | os.PathLike) -> str:
    """One line naming what an artifact holds (for the CLI)."""
    found = load_artifact(path)
    if isinstance(found, NeuronSet):
        return repr(found)
    where = "layers " + ",".join(map(str, found.recommended_layers or found.layers))
    if isinstance(found, Eraser):
        return (
            f"{path}: LEACE eraser of {', '.join(found.languages)} (every input is erased alike), applied at "
            f"{where} unless --layers says otherwise"
        )
    target = f"{found.language} -> {found.pivot}"
    kind = "shift" if isinstance(found, ShiftVector) else "map"
    if kind == "map" and found.method == "incline":
        where = "the last prompt token of every layer (INCLINE)"
    return f"{path}: {kind} {found.method} {target}, applied at {where} unless --layers says otherwise"
