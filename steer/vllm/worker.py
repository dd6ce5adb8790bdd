"""xlalign's vLLM worker extension (``worker_extension_cls``): plans installed by name, applied per request.

The engine (:mod:`steer.vllm.engine`) calls these methods by name through ``collective_rpc`` on every worker;
plans arrive as bytes (:mod:`steer.vllm.wire`). One torch hook per site any installed plan edits; in each forward
pass it slices every request that names a plan (``SamplingParams.extra_args["xlalign"]``) out of the flattened
batch and applies that plan's items at the site exactly as ``steer(model, plan)`` applies them to one example:
each schedule selects from the request's own positions and decode steps, gating reads the request's language (or
the language the plan's ``LanguageDetector`` read in the request's prompt, at its layer, in the same pass),
``ctx.original`` is the value before the plan's first edit at the site. Requests without a plan, and passes
without such requests, run untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import Tensor

from probes.artifacts import LanguageDetector
from probes.capture import pool
from probes.errors import XlalignError
from probes.model import Site
from steer.errors import EngineError
from steer.interventions import EditContext, HeadShift, Intervention, SetNeurons, ZeroNeurons, expect
from steer.schedule import Schedule
from steer.vllm.batch import Request, xlalign_requests
from steer.vllm.points import SHARDED, Point, decoder_layers, local_slice, locate, read, site_shape, write
from steer.vllm.wire import decode_plan

Items = list[tuple[Intervention, Schedule, Site]]


class XlalignWorker:
    """Methods vLLM adds to its worker class (``self`` is the worker: ``self.model_runner.model`` the model)."""

    def xlalign_describe(self) -> dict:
        """What the engine checks before any plan runs: runner, eager mode, parallel rank and size, layers."""
        config = self.vllm_config
        runner = self.model_runner
        return {
            "v2_runner": bool(getattr(self, "use_v2_model_runner", False)),
            "runner": type(runner).__name__,
            "eager": bool(config.model_config.enforce_eager),
            "cudagraphs": str(getattr(config.compilation_config, "cudagraph_mode", None)),
            "device": str(getattr(runner, "device", "cpu")),
            "tp_rank": _tp()[0],
            "tp_size": _tp()[1],
            "pp_size": config.parallel_config.pipeline_parallel_size,
            "layers": len(decoder_layers(runner.model)),
        }

    def xlalign_install(self, name: str, payload: bytes) -> str | None:
        """Install the encoded plan under ``name`` (replacing one of that name); None, or why it cannot run."""
        state = _state(self)
        try:
            items, detector = decode_plan(payload)
            plan = _Plan(_check(items, state), detector)
            if detector is not None:
                _check_detector(self, state, plan, detector)
        except XlalignError as error:
            return str(error)
        state.plans[name] = plan
        for site in plan.sites:
            state.hook(site)
        return None

    def xlalign_remove(self, name: str) -> None:
        _state(self).plans.pop(name, None)

    def xlalign_capture(self, tag: str, sites: list[str]) -> str | None:
        """Record ``sites`` (after any plan's edits) of every token of the requests that name capture ``tag``."""
        state = _state(self)
        try:
            named = {state.canonical(Site.parse(site)): site for site in sites}
            for site in named:
                state.hook(site)
        except XlalignError as error:
            return str(error)
        state.captures[tag] = {site: {} for site in named}
        state.names[tag] = named
        return None

    def xlalign_take(self, tag: str) -> bytes:
        """What capture ``tag`` recorded, as safetensors bytes (``"{index}.{site}"``: that request's tokens at
        the site, this rank's slice of a sharded site), and forget it."""
        state = _state(self)
        recorded, named = state.captures.pop(tag, {}), state.names.pop(tag, {})
        return save_tensors(
            {
                f"{index}.{named[site]}": torch.cat(chunks).contiguous()
                for site, requests in recorded.items()
                for index, chunks in requests.items()
            }
        )


def _tp() -> tuple[int, int]:
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


@dataclass
class _Plan:
    """An installed plan: its items per site (sliced to this rank) and the detector that gates it, if any."""

    items: Items
    detector: LanguageDetector | None = None
    sites: frozenset[Site] = field(init=False)  # asked at every hooked site of every pass: computed once

    def __post_init__(self) -> None:
        self.sites = frozenset(site for _, _, site in self.items)


def _check(items: list[tuple[Intervention, Schedule]], state: _State) -> Items:
    """Each item at each of its sites, checked against the full site shape and sliced to this rank's part."""
    rank, ranks = _tp()
    checked = []
    for intervention, schedule in items:
        for layer in intervention.layers:
            site = state.canonical(Site(layer, intervention.component))
            locate(state.model, site)
            if site.component == "mlp_gate" and not isinstance(intervention, ZeroNeurons):
                raise EngineError(
                    f"{site}: vLLM fuses act(gate) * up into one kernel, so mlp_gate is reachable only as ZeroNeurons "
                    f"(a zero gate activation zeroes the same units of mlp_act); {type(intervention).__name__} needs "
                    "backend='hf'"
                )
            shape = site_shape(state.config, site)
            intervention.check(site, shape)
            sliced = (
                _local(intervention, site, shape[0], rank, ranks) if site.component in SHARDED and ranks > 1 else None
            )
            checked.append((sliced or intervention, schedule, site))
    return checked


def _check_detector(worker: Any, state: _State, plan: _Plan, detector: LanguageDetector) -> None:
    """A detector-gated plan: edits after the detector's layer only, and every prompt in one pass."""
    site = state.canonical(detector.site)
    locate(state.model, site)
    expect(site, "the detector's mean", tuple(detector.mean.shape), site_shape(state.config, site))
    early = sorted(str(s) for s in plan.sites if s.layer <= detector.layer)
    if early:
        raise EngineError(
            f"the detector reads {detector.site}, so the plan may only edit later layers; it edits {', '.join(early)}"
        )
    if worker.vllm_config.scheduler_config.enable_chunked_prefill:
        raise EngineError(
            "gating by a language detector needs each prompt in one forward pass, as the hf backend runs it: start "
            "the engine with enable_chunked_prefill=False"
        )
    state.hook(site)


def _local(intervention: Intervention, site: Site, width: int, rank: int, ranks: int) -> Intervention:
    """The part of a neuron or head intervention this tensor-parallel rank applies to its slice of the units."""
    start, stop = local_slice(width, rank, ranks)
    units_field = {SetNeurons: "units", ZeroNeurons: "units", HeadShift: "heads"}.get(type(intervention))
    if units_field is None:
        raise EngineError(
            f"{site}: under tensor parallelism each rank holds a slice of {site.component}; only SetNeurons, "
            f"ZeroNeurons and HeadShift apply per slice, not {type(intervention).__name__}"
        )
    units = getattr(intervention, units_field)[site.layer]
    mine = (units >= start) & (units < stop)
    local = object.__new__(type(intervention))
    for field_name, value in vars(intervention).items():
        object.__setattr__(local, field_name, value)
    object.__setattr__(local, units_field, {site.layer: units[mine] - start})
    paired = {SetNeurons: "values", HeadShift: "vectors"}.get(type(intervention))
    if paired:
        object.__setattr__(local, paired, {site.layer: getattr(intervention, paired)[site.layer][mine]})
    return local


class _State:
    """The installed plans of one worker, the captures under way, and the hooks that serve both."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.model = worker.model_runner.model
        self.config = worker.vllm_config.model_config.hf_text_config
        self.layers = len(decoder_layers(self.model))
        self.head_dim = site_shape(self.config, Site(1, "head"))[1]
        self.plans: dict[str, _Plan] = {}
        self.points: dict[Site, Point] = {}
        self.captures: dict[str, dict[Site, dict[int, list[Tensor]]]] = {}  # tag -> site -> request -> chunks
        self.names: dict[str, dict[Site, str]] = {}  # tag -> site -> the name it was asked for
        self.detected: dict[str, str] = {}  # request id -> the language its plan's detector read in its prompt

    def canonical(self, site: Site) -> Site:
        """``hidden.i`` below the last layer is ``resid.i``: one hook, so reads follow edits at that tensor."""
        return Site(site.layer, "resid") if site.component == "hidden" and site.layer < self.layers else site

    def hook(self, site: Site) -> None:
        if site in self.points:
            return
        point = self.points[site] = locate(self.model, site)
        if point.side == "input":
            point.module.register_forward_pre_hook(
                lambda _m, args, kwargs: self.apply(site, point, args, kwargs, None), with_kwargs=True
            )
        else:
            point.module.register_forward_hook(
                lambda _m, args, kwargs, out: self.apply(site, point, args, kwargs, out), with_kwargs=True
            )

    def apply(self, site: Site, point: Point, args: tuple, kwargs: dict, output: Any) -> Any:
        requests = xlalign_requests(self.worker.model_runner) if self.plans or self.captures else []
        detecting = [r for r in requests if self._detects(r.plan, site)]
        steered = [r for r in requests if site in self._plan(r.plan).sites]
        recorded = [r for r in requests if site in self.captures.get(r.capture, {})]
        if not (detecting or steered or recorded):
            return None
        value = read(point, args, kwargs, output)
        for request in detecting:
            self._detect(request, value[request.start : request.stop])
        if steered:
            value = value.clone()
            for request in steered:
                plan = self._plan(request.plan)
                language = request.language if plan.detector is None else self._language(request)
                part = value[request.start : request.stop]
                value[request.start : request.stop] = _edit(plan.items, site, part, request, language, self.head_dim)
        for request in recorded:
            chunks = self.captures[request.capture][site].setdefault(request.index, [])
            chunks.append(value[request.start : request.stop].detach().to("cpu", copy=True))
        return write(point, args, kwargs, output, value) if steered else None

    def _plan(self, name: str | None) -> _Plan:
        return self.plans.get(name) or _NO_PLAN

    def _detects(self, name: str | None, site: Site) -> bool:
        detector = self._plan(name).detector
        return detector is not None and self.canonical(detector.site) == site

    def _detect(self, request: Request, tokens: Tensor) -> None:
        """The language of ``request`` from its whole prompt at the detector's site (its pass holds all of it)."""
        ctx = request.context
        prompt = ctx.decode_step[0] == 0
        if request.key in self.detected or not prompt.any():
            return
        if ctx.first_new != 0 or int(prompt.sum()) != int(ctx.prompt_length[0]):
            raise EngineError(f"request {request.key}: its prompt did not run in one pass; the detector cannot read it")
        detector = self._plan(request.plan).detector
        (self.detected[request.key],) = detector.predict(pool(tokens[None], prompt[None], detector.pooling))
        if len(self.detected) > 4096:  # forget the finished requests
            alive = self.worker.model_runner.requests
            self.detected = {key: code for key, code in self.detected.items() if key in alive}

    def _language(self, request: Request) -> str:
        language = self.detected.get(request.key)
        if language is None:
            raise EngineError(f"request {request.key}: no language was detected in its prompt before its edits")
        return language


_NO_PLAN = _Plan([])


def _edit(items: Items, site: Site, flat: Tensor, request: Request, language: str | None, head_dim: int) -> Tensor:
    """The plan's items at ``site`` applied to one request's ``(tokens, width)`` slice, as ``steer`` applies them."""
    heads = site.component == "head"
    x = flat[None] if not heads else flat[None].unflatten(-1, (-1, head_dim))
    original = x
    ctx = request.context
    for intervention, schedule, item_site in items:
        if item_site != site:
            continue
        chosen = schedule.select(ctx, language)
        if not chosen.any():
            continue
        edited = intervention.edit(x, EditContext(site, ctx, chosen, original))
        keep = chosen.to(x.device).view(*chosen.shape, *(1,) * (x.dim() - 2))
        x = torch.where(keep, edited.to(x.dtype), x)
    return x.flatten(2)[0] if heads else x[0]


def _state(worker: Any) -> _State:
    state = getattr(worker, "_xlalign_state", None)
    if state is None:
        state = _State(worker)
        worker._xlalign_state = state
    return state
