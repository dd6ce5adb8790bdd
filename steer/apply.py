"""Apply interventions to a model: ``with steer(model, plan):``, or ``handle = steer(model, plan)`` and later
``handle.remove()``.

A plan is an intervention, an artifact, an ``(intervention, Schedule)`` pair or a list of these
(:mod:`steer.plan`; default schedule: every prompt token and every decode step). Each intervention is checked
against every site it edits before anything is registered; the hooks are registered when ``steer`` is called
and stay until the ``with`` block ends or ``remove()`` is called (steering-vectors' handle pattern), also after
an exception. Interventions on the same site compose in plan order (and nested ``steer`` blocks in the order
they were opened): each sees the tensor the previous one returned, and as ``ctx.original`` the tensor before
the plan's first edit; every ``record`` sees the final value. No weight or attribute of the model is changed
(``generate`` is wrapped on the instance while a plan is applied, see :mod:`probes.capture.context`).

Stateless: each forward pass's tokens are read from that pass alone (mask, cache length and, inside
``generate``, the prompt's width), so the same input and plan give the same result whatever ran before, and
cached and uncached generation are steered identically. Gating on the language the model itself detects
(``languages=`` a :class:`~probes.artifacts.LanguageDetector`) classifies each example from its prompt's pooled
activations at the detector's layer inside the same forward pass; a cached decode step, whose pass holds no
prompt token, reuses what its prompt's pass detected (kept per prompt call, which the pass tracker knows from
the cache or the ``generate`` call). ``router`` interventions see an MoE gate's logits
``(batch, tokens, experts)``; the top-k of the tokens they change is recomputed by the family's own rule.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Sequence

import torch
from torch import Tensor, nn

from probes.capture.bundle import model_of
from probes.artifacts import LanguageDetector
from probes.capture import pool
from probes.capture.context import tracking
from probes.model import HookSet, Site, edit_site, site_shape
from steer.interventions import EditContext, Intervention, InterventionError
from steer.plan import Plan, PlanItem, plan_items
from steer.schedule import Schedule

__all__ = ["Languages", "Plan", "PlanItem", "SteerHandle", "plan_items", "steer"]
Languages = Sequence[str] | str | LanguageDetector | None
DETECTED_CALLS = 16  # prompt calls whose detected languages a handle keeps for their decode steps


class SteerHandle:
    """Hooks that apply a plan from when it is made until :meth:`remove` is called or its ``with`` block ends
    (also on an exception): ``with steer(model, plan) as handle:`` or ``handle = steer(model, plan)`` ...
    ``handle.remove()``."""

    def __init__(self, model: nn.Module, plan: Plan, *, languages: Languages = None):
        self.model = model
        self.removed = False
        self.plan = plan_items(plan)
        self._gating(languages)
        self._detected: dict[int, dict[int, str]] = {}  # prompt call -> example -> detected language
        checked = []
        for intervention, schedule in self.plan:
            for layer in intervention.layers:
                site = Site(layer, intervention.component)
                intervention.check(site, site_shape(model, site))
                checked.append((intervention, schedule, site))
        self._context: object | None = None
        self._selected: dict[int, Tensor] = {}
        sites = [site for _, _, site in checked]
        self._shared = {site for site in sites if sites.count(site) > 1}  # sites whose edits need the original
        self._before: dict[Site, tuple[Tensor, Tensor]] = {}  # site -> (last output of this plan, original)
        self._stack = ExitStack()
        try:
            self._tracker = self._stack.enter_context(tracking(model))
            hooks = self._stack.enter_context(HookSet())
            if self.detector is not None:
                self._check_detector(model, sites)
                edit_site(hooks, model, self.detector.site, self._detect)
            for intervention, schedule, site in checked:
                edit_site(hooks, model, site, self._editor(intervention, schedule, site))
        except BaseException:
            self.remove()
            raise

    def set_languages(self, languages: Languages) -> None:
        """The language of each example of the next forward passes (one code: all examples), for gating. Gating
        by detection is chosen when the plan is applied (``steer(..., languages=detector)``), not switched here."""
        if isinstance(languages, LanguageDetector) or self.detector is not None:
            raise InterventionError(
                "gating by a language detector is set when the plan is applied: steer(model, plan, languages=detector) "
                "(its hook reads the detector's layer in each pass); set_languages takes language codes"
            )
        self._gating(languages)

    def _gating(self, languages: Languages) -> None:
        self.detector = languages if isinstance(languages, LanguageDetector) else None
        if self.detector is not None or languages is None or isinstance(languages, str):
            self.languages = None if self.detector is not None else languages
        else:
            self.languages = tuple(languages)

    def _check_detector(self, model: nn.Module, sites: list[Site]) -> None:
        self.detector.check_fits(model, where="the language detector")
        early = sorted({site for site in sites if site.layer <= self.detector.layer})
        if early:
            raise InterventionError(
                f"the detector reads {self.detector.site}, so the plan may only edit later layers; it edits "
                f"{', '.join(map(str, early))}"
            )

    def _detect(self, x: Tensor) -> None:
        """At the detector's site: each example's language from its prompt tokens, or its prompt call's."""
        ctx = self._tracker.current
        prompt = ctx.counted & (ctx.decode_step == 0)
        known = self._detected.get(ctx.call, {})
        if bool((prompt.sum(dim=1) == ctx.prompt_length.to(prompt.device)).all()) and bool(prompt.any(dim=1).all()):
            found = self.detector.predict(pool(x, prompt.to(x.device), self.detector.pooling))
            known = {**known, **dict(zip(ctx.example.tolist(), found))}
            self._detected[ctx.call] = known
            while len(self._detected) > DETECTED_CALLS:
                self._detected.pop(next(iter(self._detected)))
        missing = [e for e in ctx.example.tolist() if e not in known]
        if missing:
            raise InterventionError(
                f"examples {missing} continue a prompt whose language was not detected (its forward pass ran "
                "outside this steer() block); run the prompt inside it"
            )
        self.languages = [known.get(e) for e in range(max(known) + 1)]
        return None

    def touches(self, language: str) -> bool:
        """Whether any plan item can edit an example in ``language``; if not, such inputs run exactly as
        without the plan (every edit returns the tensor unchanged). Under a detector, any gated item can."""
        if self.detector is not None:  # a misdetected example may be gated into any plan item
            detectable = set(self.detector.languages)
            return any(schedule.only is None or detectable & set(schedule.only) for _, schedule in self.plan)
        return any(not schedule.excludes(language) for _, schedule in self.plan)

    def remove(self) -> None:
        """Remove every hook of this plan (and ``generate``'s wrapper); calling it again does nothing."""
        self.removed = True
        self._stack.close()

    def __enter__(self) -> SteerHandle:
        if self.removed:
            raise InterventionError("this SteerHandle was removed; call steer(model, plan) again to apply the plan")
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _select(self, schedule: Schedule) -> Tensor:
        ctx = self._tracker.current
        if ctx is not self._context:  # a new forward pass
            self._context = ctx
            self._selected.clear()
            self._before.clear()
        chosen = self._selected.get(id(schedule))
        if chosen is None:
            chosen = self._selected[id(schedule)] = schedule.select(ctx, self.languages)
        return chosen

    def _editor(self, intervention: Intervention, schedule: Schedule, site: Site):
        def edit(x: Tensor) -> Tensor | None:
            ctx = self._tracker.current
            if x.shape[:2] != ctx.valid.shape:
                raise InterventionError(
                    f"{site}: tensor of shape {tuple(x.shape)} does not match the forward pass's tokens "
                    f"{tuple(ctx.valid.shape)}"
                )
            chosen = self._select(schedule)
            original = self._original(site, x)
            if not chosen.any():
                self._remember(site, x, original)
                return None
            edited = intervention.edit(x, EditContext(site, ctx, chosen, original))
            if edited.shape != x.shape:
                raise InterventionError(
                    f"{site}: {type(intervention).__name__}.edit returned shape {tuple(edited.shape)} for {tuple(x.shape)}"
                )
            keep = chosen.to(x.device).view(*chosen.shape, *(1,) * (x.dim() - 2))  # layers may sit on other GPUs
            out = torch.where(keep, edited.to(x.dtype), x)
            self._remember(site, out, original)
            return out

        return edit

    def _original(self, site: Site, x: Tensor) -> Tensor:
        """``x`` before this plan's edits: the remembered original when ``x`` is what the plan's previous edit at
        ``site`` returned in this pass (the same storage), else ``x`` itself (a new call of the site)."""
        before = self._before.get(site)
        if before is not None and before[0].data_ptr() == x.data_ptr() and before[0].shape == x.shape:
            return before[1]
        return x

    def _remember(self, site: Site, out: Tensor, original: Tensor) -> None:
        if site in self._shared:
            self._before[site] = (out, original)


def steer(model: nn.Module, plan: Plan, *, languages: Languages = None) -> SteerHandle:
    """Apply ``plan`` to ``model`` now; the returned handle removes it on :meth:`~SteerHandle.remove` or at the end
    of its ``with`` block, whatever happens. ``languages``: the language of each example (one code: all of them),
    or a :class:`~probes.artifacts.LanguageDetector`, for items whose schedule has ``only=``. ``model`` may be a
    :class:`~probes.capture.Bundle`."""
    return SteerHandle(model_of(model), plan, languages=languages)
