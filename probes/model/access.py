"""Read and write sites: the one place that turns a :class:`Site` into hooks on the model's modules.

``read_site`` calls ``fn(tensor)`` on every forward pass; ``edit_site`` lets ``fn`` return a replacement. Both
see the per-token layout of :func:`probes.model.architectures.site_shape`: ``(batch, tokens, *shape)``, so
``head`` sites arrive as ``(batch, tokens, heads, head_dim)``; a ``router`` site is read as the
``(batch, tokens, 3, experts)`` routing view and edited as ``(batch, tokens, experts)`` logits before top-k.
Where a site is, is the model's backend's answer (:func:`probes.model.backend.backend_of`): in a model inside a
TransformerLens bridge every site is the output of the bridge's hook point (:mod:`probes.model.tl`).
"""

from __future__ import annotations

from typing import Callable

from einops import rearrange
from torch import Tensor, nn

from probes.model.architectures import RouterPoint, n_heads
from probes.model.backend import backend_of
from probes.model.hooks import HookSet
from probes.model.moe import edit_router, observe_router
from probes.model.sites import Site


def _heads(fn: Callable[[Tensor], Tensor | None], heads: int) -> Callable[[Tensor], Tensor | None]:
    def per_head(x: Tensor) -> Tensor | None:
        new = fn(rearrange(x, "b t (h d) -> b t h d", h=heads))
        return None if new is None else rearrange(new, "b t h d -> b t (h d)")

    return per_head


def site_location(model: nn.Module, site: Site) -> tuple[nn.Module, str] | RouterPoint:
    """Where ``site`` is read and written, as the model's backend says (:mod:`probes.model.backend`):
    :func:`probes.model.architectures.locate`, or in a bridged model the bridge's hook point (its output) or, for a
    router, :func:`probes.model.tl.bridge_router`."""
    return backend_of(model).site_location(model, site)


def read_site(hooks: HookSet, model: nn.Module, site: Site, fn: Callable[[Tensor], None]) -> None:
    """Call ``fn`` with ``site``'s tensor on every forward pass while ``hooks`` is open (after every edit)."""
    located = site_location(model, site)
    if isinstance(located, RouterPoint):
        observe_router(hooks, located, lambda routing: fn(routing.view()))
        return
    module, side = located
    hooks.add(module, side, _heads(fn, n_heads(model)) if site.component == "head" else fn, name=str(site))


def edit_site(hooks: HookSet, model: nn.Module, site: Site, fn: Callable[[Tensor], Tensor | None]) -> None:
    """Let ``fn`` replace ``site``'s tensor (return None to leave it) on every forward pass while ``hooks`` is open."""
    located = site_location(model, site)
    if isinstance(located, RouterPoint):
        edit_router(hooks, located, fn)
        return
    module, side = located
    fn = _heads(fn, n_heads(model)) if site.component == "head" else fn
    hooks.add(module, side, fn, stage="edit", name=str(site))
