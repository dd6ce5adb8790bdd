"""Read-only recording: ``record`` keeps every token a block saw, ``watch`` streams it, ``trace`` runs texts.

``with record(model, sites) as rec:`` around any forward passes or ``model.generate(...)`` keeps the per-token
activations of every example, pads dropped, prompt and generated tokens in order (a generation without KV
cache re-runs earlier tokens; they are kept once). ``trace(model, tokenizer, texts, sites)`` runs texts in
length-sorted batches without the LM head and returns their :class:`Recording` in text order::

    rec = trace(model, tokenizer, ["The cat sleeps.", "Die Katze schläft."], [Site(6, "resid")])
    rec.tokens(Site(6, "resid"))      # [(5, 640), (7, 640)]: one tensor per text, one row per token

Reads always see the value after every edit at the same site, whatever the nesting order with ``steer``
(:mod:`probes.model.hooks`); a callback that returns a tensor is an error naming the site.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.capture.bundle import model_of, takes_bundle
from probes.capture.context import ForwardContext, PassTracker, tracking
from probes.capture.decoder import run_batches
from probes.capture.pooling import check_pooling, pool
from probes.capture.progress import Progress
from probes.capture.tokenization import Tokenization, batches
from probes.model.access import read_site
from probes.model.hooks import HookSet
from probes.model.sites import Site, SiteError

OnActivation = Callable[[Site, Tensor, ForwardContext], None]


def check_sites(sites: Sequence[Site]) -> list[Site]:
    """Sorted distinct sites; an empty list or a non-Site is an error."""
    sites = list(sites)
    if not sites:
        raise SiteError("give at least one site, e.g. [Site(6, 'resid')]")
    bad = [site for site in sites if not isinstance(site, Site)]
    if bad:
        raise SiteError(f"sites must be Site objects (Site(layer, component) or Site.parse('resid.6')), got {bad[:3]}")
    return sorted(set(sites))


@contextmanager
def watch(model: nn.Module, sites: Sequence[Site], on_activation: OnActivation) -> Iterator[PassTracker]:
    """Call ``on_activation(site, tensor, ctx)`` for every site on every forward pass inside the block.

    ``tensor`` is ``(batch, tokens, *shape)`` (pads included: ``ctx.valid`` says which are real); the callback
    must not return anything. The hooks are removed on exit, also after an exception or KeyboardInterrupt.
    """
    model = model_of(model)
    chosen = check_sites(sites)
    with tracking(model) as tracker, HookSet() as hooks:
        for site in chosen:
            read_site(hooks, model, site, lambda x, site=site: on_activation(site, x, tracker.current))
        yield tracker


class Recording:
    """Per-token activations of the examples a ``record`` block or ``trace`` saw, pads dropped; read-only.

    Examples are ordered by call (each fresh prompt or generate call), then by row (``trace``: by text).
    """

    def __init__(self, sites: Sequence[Site]) -> None:
        self.sites: tuple[Site, ...] = tuple(check_sites(sites))
        self.texts: tuple[str, ...] | None = None
        self._keys: dict[tuple[int, int], int] = {}  # (call, example) -> example slot
        self._values: dict[Site, list[tuple[Tensor, Tensor]]] = {site: [] for site in self.sites}
        self._ids: list[tuple[Tensor, Tensor, Tensor]] = []  # (slots, ids, decode steps) of each pass
        self._new: Tensor | None = None  # (batch, tokens): tokens of the current pass not seen before
        self._slots: Tensor | None = None  # slot of each new token

    def _on_pass(self, ctx: ForwardContext) -> None:
        new = ctx.valid & (ctx.columns >= ctx.first_new)[None, :]
        slots = torch.tensor(
            [self._keys.setdefault((ctx.call, int(example)), len(self._keys)) for example in ctx.example.tolist()]
        )
        self._new, self._slots = new, slots[:, None].expand(new.shape)[new.cpu()]
        ids = ctx.input_ids[new].cpu() if ctx.input_ids is not None else torch.zeros(0, dtype=torch.long)
        self._ids.append((self._slots, ids, ctx.decode_step[new].cpu()))

    def _on_site(self, site: Site, x: Tensor) -> None:
        self._values[site].append((self._slots, x[self._new.to(x.device)].detach().cpu()))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Recording(examples={len(self)}, sites=[{' '.join(map(str, self.sites))}])"

    def _order(self) -> list[int]:
        """Slots in output order: by call (first seen), then example."""
        calls = {call: rank for rank, call in enumerate(dict.fromkeys(call for call, _ in self._keys))}
        return [slot for (_, _), slot in sorted(self._keys.items(), key=lambda kv: (calls[kv[0][0]], kv[0][1]))]

    def _group(self, parts: list[tuple[Tensor, Tensor]], trailing: tuple[int, ...], dtype) -> list[Tensor]:
        if not parts:
            return [torch.zeros(0, *trailing, dtype=dtype) for _ in self._keys]
        slots = torch.cat([slot for slot, _ in parts])
        values = torch.cat([value for _, value in parts])
        order = torch.sort(slots, stable=True).indices  # token order is kept within each example
        by_slot = values[order].split(torch.bincount(slots, minlength=len(self._keys)).tolist())
        return [by_slot[slot] for slot in self._order()]

    def tokens(self, site: Site) -> list[Float[Tensor, "tokens *shape"]]:
        """One tensor per example: every non-pad token's activation at ``site``, in token order."""
        if site not in self._values:
            raise SiteError(f"{site} was not recorded; this recording has {', '.join(map(str, self.sites))}")
        parts = self._values[site]
        trailing = tuple(parts[0][1].shape[1:]) if parts else ()
        return self._group(parts, trailing, parts[0][1].dtype if parts else torch.float32)

    @property
    def ids(self) -> list[Int[Tensor, " tokens"]]:
        """One tensor per example: the token ids that went through the model (prompt, then generated)."""
        return self._group([(slots, ids) for slots, ids, _ in self._ids], (), torch.long)

    @property
    def decode_steps(self) -> list[Int[Tensor, " tokens"]]:
        """One tensor per example: 0 for prompt tokens, s for the s-th generated token."""
        return self._group([(slots, steps) for slots, _, steps in self._ids], (), torch.long)

    def pooled(self, site: Site, pooling: str = "mean") -> Float[Tensor, "examples *shape"]:
        """Each example's tokens at ``site`` pooled (see :func:`probes.capture.pooling.pool`)."""
        check_pooling(pooling)
        rows = [pool(t[None], torch.ones(1, len(t), dtype=torch.bool), pooling)[0] for t in self.tokens(site)]
        return torch.stack(rows)


@contextmanager
def record(model: nn.Module, sites: Sequence[Site]) -> Iterator[Recording]:
    """Keep every token ``model`` (or a bundle's) processes at ``sites`` while the block runs (forward passes or
    generate)."""
    model = model_of(model)
    recording = Recording(sites)
    with tracking(model, recording._on_pass):
        with watch(model, recording.sites, lambda site, x, _ctx: recording._on_site(site, x)):
            yield recording


@takes_bundle
def trace(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[Site],
    *,
    tokenization: Tokenization = Tokenization(),
    progress: Progress = False,
) -> Recording:
    """Run ``texts`` and return their per-token activations at ``sites`` (text order, pads dropped).

    Skips the LM head and stops after the deepest site's block; BOS is kept (``rec.ids`` says which tokens).
    """
    work = batches(tokenizer, texts, tokenization, device=next(model.parameters()).device)
    with record(model, sites) as recording:
        run_batches(
            model, work, stop_after=max(site.layer for site in recording.sites), progress=progress, phase="trace"
        )
    recording.texts = tuple(texts)
    return recording
