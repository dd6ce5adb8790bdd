"""xlalign steer: write to the model (interventions, schedules, steer) and judge it (closed-loop evaluation).

Importing ``steer`` is cheap: submodules (and torch) load on first use of a name.
"""

from importlib import import_module

_EXPORTS = {
    "steer": "steer.apply",
    "SteerHandle": "steer.apply",
    "Schedule": "steer.schedule",
    "AddVector": "steer.interventions",
    "Ablate": "steer.interventions",
    "ApplyMap": "steer.interventions",
    "HeadShift": "steer.interventions",
    "Erase": "steer.interventions",
    "SetNeurons": "steer.interventions",
    "ZeroNeurons": "steer.interventions",
    "Patch": "steer.patch",
    "RouterBias": "steer.router",
    "ForceExperts": "steer.router",
    "BanExperts": "steer.router",
    "to_intervention": "steer.convert",
    "EvaluationError": "steer.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'steer' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
