"""The evaluated grid: each method's settings from its findings, every plan gated to its language."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from probes.capture import Tokenization
from steer.choices import INCLINE_SIGMAS
from steer.evaluate import Setting
from steer.methods.record import Grid
from steer.methods.registry import method, names
from steer.methods.training import Findings


def incline_grid(sigmas: Sequence[float] = INCLINE_SIGMAS) -> list[tuple[str, float]]:
    """(mode, sigma) of the INCLINE settings: the released rule at each of ``sigmas``, interpolation at 0.5."""
    return [("code", float(sigma)) for sigma in sigmas] + [("interpolate", 0.5)]


def settings(
    found: Findings,
    model: nn.Module | None = None,
    tokenizer=None,
    *,
    pivot: str = "eng",
    incline_settings: Sequence[tuple[str, float]] = tuple(incline_grid()),
    tokenization: Tokenization = Tokenization(),
    sweep: bool = False,
) -> list[Setting]:
    """The settings of every method in ``found``, in the registry's order (``sweep``: the language-keeping
    methods over layers and strengths, :func:`steer.keeping.keeping_layers`). Every plan is gated to its
    language (LEACE's to the language and ``pivot``).

    ``incline_settings``: the (mode, sigma) pairs of INCLINE (:func:`steer.incline.incline`, sign +1: the
    released BLOOM script's ``c + sigma c W``; the Llama script's sigma is the negative); its plans are built
    for the texts they steer from a clean pass of ``model``, so INCLINE needs ``model`` and ``tokenizer``.
    """
    grid = Grid(found, model, tokenizer, pivot, sweep, tuple(incline_settings), tokenization)
    order = names()
    return [
        setting
        for name in sorted(found.by_method, key=order.index)
        for setting in method(name).settings(found.by_method[name], grid)
    ]
