"""Steering methods: one record per method (``steer/methods/<name>.py``), named in the registry
(:data:`steer.choices.REGISTRY`), fitted together on a training split (:func:`fit_methods`: one shared forward
pass per language) and turned into evaluable settings (:func:`settings`). The same records serve ``xlalign
find``. docs/methods.md describes each method as its paper and released code compute it.

A method of your own: write a :class:`Method` record and :func:`register` it; ``evaluate`` and ``find`` then take
its name like a built-in one's."""

from steer.methods.grid import incline_grid, settings
from steer.methods.record import Grid, Method, Need, Training
from steer.methods.registry import canonical, method, names, register, unregister
from steer.methods.training import Findings, available_methods, fit_methods, unavailable_methods

__all__ = [
    "Findings",
    "Grid",
    "Method",
    "Need",
    "Training",
    "available_methods",
    "canonical",
    "fit_methods",
    "incline_grid",
    "method",
    "names",
    "register",
    "settings",
    "unavailable_methods",
    "unregister",
]
