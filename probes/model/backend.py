"""The backend seam: how xlalign runs a torch model it holds, one small protocol answered per model object.

A :class:`Backend` says which model objects are its own (``owns``), how ``resolve_model(..., backend=name)`` wraps
a model for it (``wrap``), where a :class:`Site` is read and written (``site_location``), where the decoder loop
stops early (``early_exit_point``), and how a forward pass, a pass of the decoder stack and ``generate`` run
(``forward``, ``decoder_forward``, ``generate``). Three are built in: :data:`HF` (xlalign's own torch hooks on the
transformers modules, the reference), :data:`TL` (the hook points of a TransformerLens bridge,
:mod:`probes.model.tl`) and :data:`NNSIGHT` (the same hooks run from nnsight traces, :mod:`probes.model.envoys`).
:func:`backend_of` asks the registered backends newest first (nnsight, then tl, then hf, which owns every model)
and every caller dispatches through its answer: adding a backend is one :func:`register_backend` call.

The split with :mod:`probes.capture`, which this layer may not import: the pass methods take the
``contextvars.Context`` the model's hooks run in, made by :mod:`probes.capture.passes` (for ``generate``, with the
call already marked as one generation). ``hf`` and ``tl`` run their hooks in the caller's own thread and ignore
it; ``nnsight`` runs them in a trace body elsewhere, in that context. The answer is not cached: it costs two
attribute checks, and ``transformer_bridge(model, copy_model=False)`` turns an ``hf`` model into a bridged one in
place, so it is no constant of the object.

Engines that run the model elsewhere (vLLM, in ``steer/vllm/``; llama.cpp) are not Backends of this protocol:
they hold no torch modules to hook, and are separate engines with their own entry points.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from probes.choices import BACKENDS
from probes.model import envoys, tl
from probes.model.architectures import RouterPoint, blocks, decoder, locate, n_layers, unwrap
from probes.model.sites import BackendError, Site, SiteError

Location = tuple[nn.Module, str]  # (module, side): side "input" or "output"


@runtime_checkable
class Backend(Protocol):
    """How xlalign runs a model object of one kind (see the module docstring)."""

    name: str

    def owns(self, model: object) -> bool:
        """Whether ``model`` is run by this backend (a model object never changes backend while it is used)."""

    def wrap(self, model: nn.Module, tokenizer, *, copy_model: bool) -> nn.Module:
        """The model to run for ``resolve_model(model, tokenizer, backend=name)``: ``model`` itself when this backend
        owns it, else ``model`` made this backend's (on a copy unless ``copy_model`` is False)."""

    def site_location(self, model: nn.Module, site: Site) -> Location | RouterPoint:
        """The module and side that hold ``site``, or for a ``router`` site its :class:`RouterPoint`."""

    def early_exit_point(self, model: nn.Module, layer: int) -> Location | None:
        """Where the pass stops once block ``layer`` ran, after every read there (None: it runs to the end)."""

    def forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> Any:
        """The causal LM's output for ``inputs``, the hooks run in ``context``."""

    def decoder_forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> None:
        """The decoder stack without the LM head, the hooks run in ``context``."""

    def generate(self, model: nn.Module, context: contextvars.Context, **kwargs) -> Tensor:
        """Prompt and generated token ids of ``model.generate(**kwargs)``, the hooks run in ``context``."""


class HFBackend:
    """``hf``: xlalign's hooks on the transformers modules, placed by the family's table; owns every model. Subclass
    it for a backend that differs in a few methods."""

    name = "hf"

    def owns(self, model: object) -> bool:
        return True

    def wrap(self, model: nn.Module, tokenizer, *, copy_model: bool) -> nn.Module:
        return model

    def site_location(self, model: nn.Module, site: Site) -> Location | RouterPoint:
        return locate(model, site)

    def early_exit_point(self, model: nn.Module, layer: int) -> Location | None:
        if layer >= n_layers(model):  # after the last block only the final norm is left: run to the end
            return None
        return (blocks(model)[0], "input") if layer == 0 else (blocks(model)[layer - 1], "output")

    def forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> Any:
        return unwrap(model)(**inputs)

    def decoder_forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> None:
        decoder(model)(**inputs)

    def generate(self, model: nn.Module, context: contextvars.Context, **kwargs) -> Tensor:
        return unwrap(model).generate(**kwargs)  # marked as one generation by the tracker's wrapper, if one is open

    def __repr__(self) -> str:
        return f"<backend {self.name!r}>"


class TLBackend(HFBackend):
    """``tl``: a TransformerBridge, or the transformers model inside one, run as it is (the bridge wraps the model's
    own modules); every site is read and written at the bridge's hook point (:mod:`probes.model.tl`)."""

    name = "tl"

    def owns(self, model: object) -> bool:
        if tl.is_bridge(model):
            return True
        try:
            return tl.is_bridged(model)
        except (SiteError, AttributeError):  # no family table or no decoder: not a model a bridge wraps
            return False

    def wrap(self, model: nn.Module, tokenizer, *, copy_model: bool) -> nn.Module:
        return model if self.owns(model) else tl.transformer_bridge(model, tokenizer, copy_model=copy_model)

    def site_location(self, model: nn.Module, site: Site) -> Location | RouterPoint:
        if site.component == "router":
            return tl.bridge_router(model, site)
        return tl.hook_point(model, site), "output"

    def early_exit_point(self, model: nn.Module, layer: int) -> Location | None:
        point = super().early_exit_point(model, layer)
        if point is not None and layer == 0:  # layer 0 is read inside block 1, at the bridge's hook point
            return tl.hook_point(model, Site(0, "resid")), "output"
        return point


class NnsightBackend(HFBackend):
    """``nnsight``: every pass is an nnsight trace whose body runs xlalign's hooks at the modules' Envoys
    (:mod:`probes.model.envoys`); the hooks sit where the backend of the model inside puts them."""

    name = "nnsight"

    def owns(self, model: object) -> bool:
        return envoys.is_nnsight(model)

    def wrap(self, model: nn.Module, tokenizer, *, copy_model: bool) -> nn.Module:
        return model if self.owns(model) else envoys.nnsight_model(model, tokenizer, copy_model=copy_model)

    def site_location(self, model: nn.Module, site: Site) -> Location | RouterPoint:
        return backend_of(unwrap(model)).site_location(model, site)

    def early_exit_point(self, model: nn.Module, layer: int) -> Location | None:
        return backend_of(unwrap(model)).early_exit_point(model, layer)  # reached, the trace stops

    def forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> Any:
        return envoys.trace(model, context, **inputs)

    def decoder_forward(self, model: nn.Module, context: contextvars.Context, **inputs) -> None:
        envoys.trace(model, context, output=False, **inputs)

    def generate(self, model: nn.Module, context: contextvars.Context, **kwargs) -> Tensor:
        return envoys.generate(model, context, **kwargs)


HF, TL, NNSIGHT = HFBackend(), TLBackend(), NnsightBackend()
# Name -> Backend, in registration order; backend_of asks them newest first (hf, owning every model, answers last).
BACKENDS_BY_NAME: dict[str, Backend] = {backend.name: backend for backend in (HF, TL, NNSIGHT)}
BUILTIN_BACKENDS = tuple(BACKENDS_BY_NAME)


def backend_of(model: object) -> Backend:
    """The backend that runs ``model``: the newest registered one that owns it (built in: nnsight, tl, then hf)."""
    for backend in reversed(BACKENDS_BY_NAME.values()):
        if backend.owns(model):
            return backend
    return HF


def backend_names() -> tuple[str, ...]:
    """Every name ``resolve_model(backend=...)`` takes: :data:`probes.choices.BACKENDS` and the registered ones."""
    return (*BACKENDS, *(name for name in BACKENDS_BY_NAME if name not in BACKENDS))


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` under its name (it replaces an earlier registration of that name, not a built-in one); from
    now on ``resolve_model(backend=name)`` wraps models with it and :func:`backend_of` asks it first."""
    if backend.name in BACKENDS or backend.name in BUILTIN_BACKENDS:
        raise BackendError(f"{backend.name!r} is a built-in backend; give yours another name")
    BACKENDS_BY_NAME.pop(backend.name, None)  # a new registration is asked first
    BACKENDS_BY_NAME[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend :func:`register_backend` added (the built-in ones stay)."""
    if name in BUILTIN_BACKENDS:
        raise BackendError(f"{name!r} is a built-in backend and cannot be removed")
    BACKENDS_BY_NAME.pop(name, None)
