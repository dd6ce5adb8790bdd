"""Apply interventions to a model: ``with steer(model, plan):`` or a :class:`SteerHandle` with ``remove()``.

A plan is a sequence of interventions, each optionally paired with a :class:`~steer.schedule.Schedule`
(default: every prompt token and every decode step). Interventions on the same site compose in plan order:
each sees the tensor the previous one returned. Hooks are registered on the model's own modules and always
removed, also after an exception; no weight or attribute of the model is changed.

Works for plain forward passes and inside ``model.generate`` (greedy or sampling, with or without KV cache,
left or right padding): the schedule's view of each token (prompt position or decode step) is derived from
the attention mask and cache length, so cached and uncached generation are steered identically.

``router`` interventions see an MoE gate's logits ``(batch, tokens, experts)``; the top-k of the tokens they
change is recomputed by the family's own rule (:func:`probes.routing.edit_router`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from probes.routing import edit_router
from probes.sites import Site, hook, n_heads, tap
from steer.interventions import Intervention
from steer.schedule import Schedule, StepContext

PlanItem = Intervention | tuple[Intervention, Schedule]


class SteerHandle:
    """Hooks that apply a plan until :meth:`remove` is called."""

    def __init__(self, model: nn.Module, plan: Sequence[PlanItem], *, languages: Sequence[str] | str | None = None):
        self.model = model
        self.plan = [item if isinstance(item, tuple) else (item, Schedule()) for item in plan]
        self.set_languages(languages)
        self._heads = n_heads(model)
        self._ctx: StepContext | None = None
        self._selected: dict[int, Tensor] = {}
        self._prompt: tuple[int, Tensor, Tensor] | None = None  # columns, padded prompt mask, non-pad lengths
        self._previous_ids: Tensor | None = None
        self._handles = []
        try:
            decoder = model.base_model
            self._handles.append(decoder.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            for intervention, schedule in self.plan:
                for layer in intervention.layers:
                    module, side = tap(model, Site(layer, intervention.component))
                    edit = self._editor(intervention, schedule, layer)
                    self._handles.append(edit_router(module, edit) if side == "router" else hook(module, side, edit))
        except BaseException:
            self.remove()
            raise

    def set_languages(self, languages: Sequence[str] | str | None) -> None:
        """The language of each example of the next forward passes (one code: all examples), for gating."""
        self.languages = languages if languages is None or isinstance(languages, str) else tuple(languages)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, _module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, tokens = (ids if ids is not None else embeds).shape[:2]
        device = (ids if ids is not None else embeds).device
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if mask is None:
            mask = torch.ones(batch, past + tokens, dtype=torch.long, device=device)
        if mask.dim() != 2 or mask.shape[1] != past + tokens:
            raise ValueError(
                f"steer needs a 2-D attention mask covering cache and input ({past} + {tokens} columns); "
                f"got shape {tuple(mask.shape)}"
            )
        continues = (
            past == 0 and ids is not None and self._previous_ids is not None
            and self._previous_ids.shape[0] == batch and self._previous_ids.shape[1] == tokens - 1
            and torch.equal(self._previous_ids, ids[:, :-1])
        )  # fmt: skip
        if past == 0 and not continues:  # a new prompt: remember its layout
            self._prompt = (tokens, mask[:, :tokens].bool(), mask[:, :tokens].sum(dim=1))
        elif self._prompt is None:
            raise ValueError("steer was entered during a generation: open it before the prompt's forward pass")
        self._previous_ids = ids if past == 0 else None
        prompt_columns, prompt_mask, prompt_length = self._prompt
        columns = past + torch.arange(tokens, device=device)
        decode_step = (columns - prompt_columns + 1).clamp(min=0).expand(batch, tokens)
        self._ctx = StepContext(
            valid=mask[:, -tokens:].bool(),
            position=(mask.cumsum(dim=1) - 1)[:, -tokens:],
            prompt_length=prompt_length,
            decode_step=decode_step,
            prompt_mask=prompt_mask,
            columns=columns,
            languages=self.languages,
        )
        self._selected.clear()

    def _editor(self, intervention: Intervention, schedule: Schedule, layer: int):
        heads = self._heads if intervention.component == "head" else None

        def edit(x: Tensor) -> Tensor | None:
            ctx = self._ctx
            if ctx is None or x.shape[:2] != ctx.valid.shape:
                raise ValueError(
                    f"{intervention.component}.{layer}: tensor of shape {tuple(x.shape)} does not match the "
                    f"forward pass's tokens {tuple(ctx.valid.shape) if ctx else '(none seen)'}"
                )
            chosen = self._selected.get(id(schedule))
            if chosen is None:
                chosen = self._selected[id(schedule)] = schedule.select(ctx)
            if not chosen.any():
                return None
            view = rearrange(x, "b t (h d) -> b t h d", h=heads) if heads else x
            keep = chosen.view(*chosen.shape, *(1,) * (view.dim() - 2))
            edited = torch.where(keep, intervention.edit(layer, view), view)
            return rearrange(edited, "b t h d -> b t (h d)") if heads else edited

        return edit


@contextmanager
def steer(
    model: nn.Module, plan: Sequence[PlanItem], *, languages: Sequence[str] | str | None = None
) -> Iterator[SteerHandle]:
    """Apply ``plan`` to ``model`` inside the block; the hooks are removed on exit, whatever happens."""
    handle = SteerHandle(model, plan, languages=languages)
    try:
        yield handle
    finally:
        handle.remove()
