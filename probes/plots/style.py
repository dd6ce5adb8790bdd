"""One paper style for every figure: a colour-blind-safe palette (Okabe & Ito) with a marker per series, colour-blind-
safe colormaps, font sizes readable at a paper's column width, integer layer ticks, axis labels with units, and
PNG/PDF files that come out byte-identical on every run (no time stamp, no software version)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Sequence

from matplotlib import rc_context
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.rcsetup import cycler
from matplotlib.ticker import MaxNLocator

from probes.errors import XlalignError


class FigureError(XlalignError):
    """A figure that cannot be written as asked (a file suffix other than .png or .pdf)."""


# Okabe & Ito (2008), "Color universal design": blue, vermillion, bluish green, reddish purple, orange, sky blue,
# black, and yellow last (the least visible on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
# Seven markers against eight colours: the first 56 series all differ in the (colour, marker) pair.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
HATCHES = ("", "////", "....", "xxxx", "\\\\\\\\")  # bars: a new hatch each time the palette runs out
SEQUENTIAL = "viridis"  # values >= 0
DIVERGING = "RdBu_r"  # signed values, centred at 0 (ColorBrewer RdBu: colour-blind safe)

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
TEXT_WIDTH = 7.0  # inches: the full text width
DPI = 200

LAYER = "layer (0 = embeddings)"
BLOCK = "layer (block)"
METRICS = {  # metric name -> (what it is, its unit)
    "mexa": ("MEXA", "fraction aligned"),
    "retrieval_top1": ("retrieval top-1", "accuracy"),
    "retrieval_top1_reverse": ("reverse retrieval top-1", "accuracy"),
    "strong_map": ("strong alignment", "MAP"),
    "matched_random_gap": ("matched - random similarity", "cosine"),
    "cka": ("linear CKA", "0-1"),
    "langid_acc": ("language-ID accuracy", "cross-validated"),
    "jsd": ("JS divergence from pivot", "nats"),
    "jsd_norm": ("normalised JS divergence", "0-1"),
    "topk_jaccard": ("top-k expert overlap", "Jaccard"),
    "usage": ("expert usage", "share of tokens routed to it"),
    "loss_target": ("target-language loss", "nats"),
    "loss_pivot": ("pivot-language loss", "nats"),
    "line_fidelity": ("line-level fidelity", "share of continuations"),
    "word_fidelity": ("word-level fidelity", "share of continuations"),
    "detection_accuracy": ("detected language", "accuracy"),
}

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.1,
    "lines.markersize": 3.0,
    "image.cmap": SEQUENTIAL,
    "pdf.fonttype": 42,  # TrueType, not Type 3: what publishers ask for
}
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def metric_name(metric: str) -> str:
    """What ``metric`` is, in words (``<metric>_mean_after``: its mean over the edited layers)."""
    if metric.endswith("_mean_after"):
        return f"{metric_name(metric.removesuffix('_mean_after'))}, mean over edited layers"
    return METRICS.get(metric, (metric, ""))[0]


def metric_unit(metric: str) -> str:
    return METRICS.get(metric.removesuffix("_mean_after"), ("", ""))[1]


def metric_label(metric: str) -> str:
    """The axis label of ``metric``: its name and unit."""
    unit = metric_unit(metric)
    return f"{metric_name(metric)} ({unit})" if unit else metric_name(metric)


def series_styles(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Colour and marker of each series (line or scatter), distinct for up to 56 series."""
    return {
        name: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]} for i, name in enumerate(names)
    }


def bar_styles(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Colour and hatch of each bar series: the palette, then again with a hatch each time it runs out."""
    return {
        name: {"color": PALETTE[i % len(PALETTE)], "hatch": HATCHES[i // len(PALETTE) % len(HATCHES)]}
        for i, name in enumerate(names)
    }


def layer_axis(axis: Axis, label: str = LAYER) -> None:
    """Label ``axis`` as layers and tick it at whole layers only."""
    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_label_text(label)


def legend_columns(n: int, per_column: int = 16) -> int:
    return max(1, -(-n // per_column))


def paper_figure(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure ``draw`` returns under the paper style (fonts, palette, spines; ticks drawn later too)."""

    @functools.wraps(draw)
    def styled(*args, **kwargs) -> Figure:
        with rc_context(RC):
            figure = draw(*args, **kwargs)
            for ax in figure.axes:  # ticks are made lazily; the first one, made here, is the model of the rest
                ax.tick_params(labelsize=RC["xtick.labelsize"])
        return figure

    return styled


def save(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as PNG or PDF (from the suffix of ``path``) without time stamp or software version, so that
    the same figure gives the same bytes."""
    path = Path(path)
    kind = path.suffix.lstrip(".").lower()
    if kind not in METADATA:
        raise FigureError(f"{path}: figures are written as .png or .pdf, not {path.suffix or 'without a suffix'}")
    with rc_context(RC):
        figure.savefig(path, format=kind, dpi=DPI, metadata=METADATA[kind])
    return path
