"""xlalign's vLLM worker extension (``worker_extension_cls``): plans installed by name, applied per request.

The engine (:mod:`steer.vllm.engine`) calls these methods by name through ``collective_rpc`` on every worker;
plans arrive as bytes (:mod:`steer.vllm.wire`). One torch hook per site any installed plan edits; in each forward
pass it slices every request that names a plan (``SamplingParams.extra_args["xlalign"]``) out of the flattened
batch and applies that plan's items at the site exactly as ``steer(model, plan)`` applies them to one example:
each schedule selects from the request's own positions and decode steps, gating reads the request's language,
``ctx.original`` is the value before the plan's first edit at the site. Requests without a plan, and passes
without such requests, run untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import Tensor

from probes.errors import XlalignError
from probes.model import Site
from steer.errors import EngineError
from steer.interventions import EditContext, HeadShift, Intervention, SetNeurons, ZeroNeurons
from steer.schedule import Schedule
from steer.vllm.batch import Request, xlalign_requests
from steer.vllm.points import SHARDED, Point, local_slice, locate, read, site_shape, write
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
            "layers": len(_layers(runner.model)),
        }

    def xlalign_install(self, name: str, payload: bytes) -> str | None:
        """Install the encoded plan under ``name`` (replacing one of that name); None, or why it cannot run."""
        config = self.vllm_config.model_config.hf_text_config
        try:
            items = _check(decode_plan(payload), config, runner_model(self))
        except XlalignError as error:
            return str(error)
        state = _state(self)
        state.plans[name] = items
        state.head_dim = site_shape(config, Site(1, "head"))[1]
        for _, _, site in items:
            state.hook(site)
        return None

    def xlalign_remove(self, name: str) -> None:
        _state(self).plans.pop(name, None)

    def xlalign_capture(self, tag: str, sites: list[str]) -> str | None:
        """Record ``sites`` (after any plan's edits) of every token of the requests that name capture ``tag``."""
        state = _state(self)
        try:
            chosen = [Site.parse(site) for site in sites]
            for site in chosen:
                state.hook(site)
        except XlalignError as error:
            return str(error)
        state.captures[tag] = {site: {} for site in chosen}
        return None

    def xlalign_take(self, tag: str) -> bytes:
        """What capture ``tag`` recorded, as safetensors bytes (``"{index}.{site}"``: that request's tokens at
        the site, this rank's slice of a sharded site), and forget it."""
        recorded = _state(self).captures.pop(tag, {})
        return save_tensors(
            {
                f"{index}.{site}": torch.cat(chunks).contiguous()
                for site, requests in recorded.items()
                for index, chunks in requests.items()
            }
        )


def runner_model(worker: Any) -> torch.nn.Module:
    return worker.model_runner.model


def _layers(model: torch.nn.Module):
    from steer.vllm.points import decoder_layers

    return decoder_layers(model)


def _tp() -> tuple[int, int]:
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def _check(items: list[tuple[Intervention, Schedule]], config: Any, model) -> Items:
    """Each item at each of its sites, checked against the full site shape and sliced to this rank's part."""
    rank, ranks = _tp()
    checked = []
    for intervention, schedule in items:
        for layer in intervention.layers:
            site = Site(layer, intervention.component)
            locate(model, site)
            if site.component == "mlp_gate" and not isinstance(intervention, ZeroNeurons):
                raise EngineError(
                    f"{site}: vLLM fuses act(gate) * up into one kernel, so mlp_gate is reachable only as ZeroNeurons "
                    f"(a zero gate activation zeroes the same units of mlp_act); {type(intervention).__name__} needs "
                    "backend='hf'"
                )
            shape = site_shape(config, site)
            intervention.check(site, shape)
            sliced = (
                _local(intervention, site, shape[0], rank, ranks) if site.component in SHARDED and ranks > 1 else None
            )
            checked.append((sliced or intervention, schedule, site))
    return checked


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
    """The installed plans of one worker and the hooks that apply them."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.plans: dict[str, Items] = {}
        self.points: dict[Site, Point] = {}
        self.captures: dict[str, dict[Site, dict[int, list[Tensor]]]] = {}  # tag -> site -> request -> chunks
        self.head_dim = 0

    def hook(self, site: Site) -> None:
        if site in self.points:
            return
        point = self.points[site] = locate(runner_model(self.worker), site)
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
        steered = [r for r in requests if self._at(r.plan, site)]
        recorded = [r for r in requests if site in self.captures.get(r.capture, {})]
        if not steered and not recorded:
            return None
        value = read(point, args, kwargs, output)
        if steered:
            value = value.clone()
            for request in steered:
                part = value[request.start : request.stop]
                value[request.start : request.stop] = _edit(
                    self.plans[request.plan], site, part, request, self.head_dim
                )
        for request in recorded:
            chunks = self.captures[request.capture][site].setdefault(request.index, [])
            chunks.append(value[request.start : request.stop].detach().to("cpu", copy=True))
        return write(point, args, kwargs, output, value) if steered else None

    def _at(self, plan: str | None, site: Site) -> bool:
        return any(item_site == site for _, _, item_site in self.plans.get(plan, ()))


def _edit(items: Items, site: Site, flat: Tensor, request: Request, head_dim: int) -> Tensor:
    """The plan's items at ``site`` applied to one request's ``(tokens, width)`` slice, as ``steer`` applies them."""
    heads = site.component == "head"
    x = flat[None] if not heads else flat[None].unflatten(-1, (-1, head_dim))
    original = x
    ctx = request.context
    for intervention, schedule, item_site in items:
        if item_site != site:
            continue
        chosen = schedule.select(ctx, request.language)
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
