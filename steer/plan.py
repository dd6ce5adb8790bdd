"""What ``steer(model, plan)`` accepts, as a list of (intervention, schedule) pairs.

A plan is one of: an intervention; an artifact (``ShiftVector``, ``LinearMap``, ``Eraser``, or a ``NeuronSet``
of one language), converted by :func:`steer.convert.to_intervention` at its recommended layers with strength 1;
an ``(intervention or artifact, Schedule)`` pair; or a list (any iterable) mixing these. Items without a
schedule get the default one (every prompt token and every decode step).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Union

from torch import Tensor

from probes.artifacts import Artifact, LanguageDetector, NeuronSet
from steer.convert import to_intervention
from steer.interventions import Intervention, InterventionError
from steer.schedule import Schedule

Step = Union[Intervention, Artifact]
PlanItem = Union[Step, tuple[Step, Schedule]]
Plan = Union[PlanItem, Iterable[PlanItem]]
ACCEPTED = (
    "an intervention (e.g. AddVector), an artifact (ShiftVector, LinearMap, Eraser, NeuronSet), an "
    "(intervention or artifact, Schedule) pair, or a list of these"
)


def plan_items(plan: Plan) -> list[tuple[Intervention, Schedule]]:
    """Each item of ``plan`` as (intervention, schedule): artifacts converted, the default schedule where none
    is given. Anything else is an :class:`InterventionError` naming what was given and what is accepted."""
    if is_single(plan):
        return [_item(plan, "the plan")]
    if isinstance(plan, (str, bytes, Mapping, Tensor)) or not isinstance(plan, Iterable):
        raise InterventionError(f"steer(): got {_given(plan)} as the plan; expected {ACCEPTED}")
    return [_item(item, f"plan item {index}") for index, item in enumerate(plan)]


def is_single(plan: object) -> bool:
    """Whether ``plan`` is one step or one (step, Schedule) pair, rather than a list of items."""
    pair = isinstance(plan, tuple) and len(plan) == 2 and isinstance(plan[1], Schedule)
    return pair or isinstance(plan, (Intervention, Artifact))


def _item(item: object, where: str) -> tuple[Intervention, Schedule]:
    step, schedule = item if isinstance(item, tuple) and len(item) == 2 else (item, Schedule())
    if not isinstance(schedule, Schedule):
        raise InterventionError(
            f"{where}: got a pair whose second element is {_given(schedule)}, not a Schedule; expected {ACCEPTED}"
        )
    if isinstance(step, Artifact):
        step = _convert(step, where)
    if not isinstance(step, Intervention):
        raise InterventionError(f"{where}: got {_given(item)}; expected {ACCEPTED}")
    return step, schedule


def _convert(artifact: Artifact, where: str) -> Intervention:
    """``to_intervention(artifact)`` with strength 1 at its recommended layers, or an error saying what to do."""
    if isinstance(artifact, LanguageDetector):
        raise InterventionError(
            f"{where} is a LanguageDetector, which does not edit the model; to gate the plan on "
            "the language it detects, pass it as steer(model, plan, languages=detector)"
        )
    language = None
    if isinstance(artifact, NeuronSet):
        if not artifact.languages:
            raise InterventionError(f"{where} is a NeuronSet without units: it has nothing to steer with")
        if len(artifact.languages) > 1:
            raise InterventionError(
                f"{where} is a NeuronSet with units for {len(artifact.languages)} languages "
                f"({', '.join(artifact.languages)}): say which to steer with, e.g. "
                f"to_intervention(neurons, language={artifact.languages[0]!r}) in the plan"
            )
        language = artifact.languages[0]
    try:
        return to_intervention(artifact, language=language)
    except InterventionError as error:
        raise InterventionError(f"{where}: {error}") from None


def _given(value: object) -> str:
    """What the caller passed, for error messages: its type and the start of its repr, on one line."""
    text = " ".join(repr(value).split())
    name = type(value).__name__
    shown = text if text.startswith(name) else f"{name} {text}"
    hint = " (a Schedule edits nothing alone: pair it with an intervention)" if isinstance(value, Schedule) else ""
    return f"{shown[:80]}{'...' if len(shown) > 80 else ''}{hint}"
