"""Serving xlalign plans with vLLM's OpenAI-compatible server: the ``vllm.general_plugins`` entry point.

Name the plans when the server starts; each request then picks one with ``vllm_xargs``::

    XLALIGN_VLLM_PLANS='{"deu": "out/deu.xlplan", "shift": "out/shift.safetensors"}' \\
        vllm serve MODEL --enforce-eager --no-enable-prefix-caching

    client.completions.create(model=MODEL, prompt=..., extra_body={"vllm_xargs": {"xlalign_plan": "deu",
                              "xlalign_language": "deu"}})

A path is a plan file written by :func:`save_plan` (any plan the engine runs) or an xlalign artifact (applied as
``steer(model, artifact)`` applies it). Vllm loads this plugin in every process when xlalign is installed; it does
nothing unless ``XLALIGN_VLLM_PLANS`` is set. Then every worker installs the plans once its model is loaded, and
refuses to start (with the reason) where a plan cannot apply: the V2 model runner, CUDA graphs or compiled
graphs (``--enforce-eager`` is required), and the prefix cache (a request's plan travels in ``vllm_xargs``, which
the prefix cache does not see, so a steered request could reuse KV computed without its plan). In the API process
a request naming a plan that is not served, or a language-gated plan without ``xlalign_language``, is rejected
(HTTP 400) before it is scheduled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from probes.artifacts import LanguageDetector
from probes.data.files import atomic_path
from steer.apply import Plan
from steer.errors import EngineError
from steer.patch import Patch
from steer.plan import plan_items
from steer.vllm.wire import decode_plan, encode_plan

ENV = "XLALIGN_VLLM_PLANS"
PLAN_SUFFIX = ".xlplan"


def save_plan(
    plan: Plan, path: str | os.PathLike, *, detector: LanguageDetector | None = None, overwrite: bool = False
) -> Path:
    """Write ``plan`` (anything the vLLM engine runs; ``detector``: gated on the language it detects) to ``path``
    (ending in ``.xlplan``) for a server to load."""
    path = Path(path)
    if path.suffix != PLAN_SUFFIX:
        raise EngineError(f"{path}: a plan file ends in {PLAN_SUFFIX}")
    if path.exists() and not overwrite:
        raise EngineError(f"{path} exists; pass overwrite=True to replace it")
    payload = encode_plan(plan_items(plan), detector)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(payload)
    return path


def served_plans() -> dict[str, bytes]:
    """The encoded plans ``XLALIGN_VLLM_PLANS`` names (empty when it is not set)."""
    raw = os.environ.get(ENV)
    if not raw:
        return {}
    try:
        named = json.loads(raw)
    except json.JSONDecodeError as error:
        raise EngineError(f"{ENV} must be a JSON object of plan name -> file, got {raw!r}") from error
    if not isinstance(named, dict) or not named:
        raise EngineError(f"{ENV} must be a non-empty JSON object of plan name -> file, got {raw!r}")
    return {str(name): _payload(Path(path)) for name, path in named.items()}


def _payload(path: Path) -> bytes:
    if not path.exists():
        raise EngineError(f"{ENV}: {path} does not exist")
    if path.suffix == PLAN_SUFFIX:
        return path.read_bytes()
    from probes.artifacts import load_artifact

    return encode_plan(plan_items(load_artifact(path)))


def register() -> None:
    """The entry point: with plans named, install them in every worker after its model loads and check each
    request's choice in the API process."""
    plans = served_plans()
    if not plans:
        return
    from vllm.sampling_params import SamplingParams
    from vllm.v1.worker.gpu_worker import Worker

    if getattr(Worker.load_model, "_xlalign", False):
        return
    load_model, verify = Worker.load_model, SamplingParams._verify_extra_args
    gated = {name for name, payload in plans.items() if _needs_language(decode_plan(payload))}

    def load_and_install(self, *args, **kwargs):
        loaded = load_model(self, *args, **kwargs)
        install(self, plans)
        return loaded

    def verify_choice(self) -> None:
        verify(self)
        _check_request(self.extra_args or {}, plans, gated)

    load_and_install._xlalign = True
    Worker.load_model, SamplingParams._verify_extra_args = load_and_install, verify_choice


def _needs_language(plan) -> bool:
    return plan.detector is None and any(schedule.only for _, schedule in plan.items)


def install(worker, plans: dict[str, bytes]) -> None:
    """Install ``plans`` on ``worker`` after the checks a served plan needs; an error names the first failure."""
    from steer.vllm.worker import XlalignWorker

    describe = XlalignWorker.xlalign_describe(worker)
    if describe["v2_runner"] or not describe["eager"]:
        raise EngineError(
            f"{ENV}: plans apply through module hooks, which vLLM's V2 model runner and CUDA or compiled graphs do "
            "not run: serve with --enforce-eager (and VLLM_USE_V2_MODEL_RUNNER=0)"
        )
    if worker.vllm_config.cache_config.enable_prefix_caching:
        raise EngineError(
            f"{ENV}: the prefix cache cannot see which plan a request chose (vllm_xargs): serve with "
            "--no-enable-prefix-caching"
        )
    for name, payload in plans.items():
        if any(isinstance(item, Patch) for item, _ in decode_plan(payload).items):
            raise EngineError(f"{ENV}: plan {name!r} patches values recorded for given prompts; it cannot be served")
        problem = XlalignWorker.xlalign_install(worker, name, payload)
        if problem:
            raise EngineError(f"{ENV}: plan {name!r}: {problem}")


def _check_request(extra: dict, plans: dict[str, bytes], gated: set[str]) -> None:
    from vllm.exceptions import VLLMValidationError

    name = extra.get("xlalign_plan")
    if name is None:
        return
    if name not in plans:
        raise VLLMValidationError(
            f"xlalign_plan {name!r} is not served here; served: {', '.join(plans)}", parameter="vllm_xargs"
        )
    if name in gated and not extra.get("xlalign_language"):
        raise VLLMValidationError(
            f"xlalign_plan {name!r} is gated by language: give xlalign_language", parameter="vllm_xargs"
        )
