"""Settings of the methods meant to raise alignment and keep the output language: ``diffmean`` (CLaS-Bench),
``erase`` (LEACE) and ``sandwich`` (align in the middle, restore at the top, ITLC-style), with the layer and
strength sweep of each.

The layers come from the alignment profile measured on the training split (mean over languages of MEXA
between the pivot and each language, per layer, on mean-pooled residuals): the *peak* is the most aligned
layer below the last, and the *restore* layer is the first layer after the peak whose alignment has fallen
below the midpoint between the peak and the last layer's (where the representation turns language-specific
again; the last layer below the top if it never does). The sandwich shifts (DiffMean towards the pivot) or
erases (LEACE) at the peak and re-injects the language's own direction (DiffMean from the pivot towards the
language, ITLC's "monolingual" injection with a difference-of-means vector instead of an LDA one) at the
restore layer, so the middle representation is shared and the output language is kept.

DiffMean's strength ``alpha`` is absolute in CLaS-Bench (1, 2.5, 5, 10 for 8B models); here it is a multiple of
the norm of the language's token-mean gap at the layer, so one grid fits every model's activation scale.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from probes.artifacts import Eraser, ShiftVector
from probes.find import gap_norm
from steer.convert import add_vector, erase
from steer.evaluate import Setting
from steer.interventions import finite
from steer.schedule import gated
from steer.errors import EvaluationError

DIFFMEAN_SCALES = (0.25,)  # without --sweep: the strength that kept the loss and the language on NTREX
SWEEP_SCALES = (0.1, 0.25, 0.5)
SANDWICH_SCALES = (0.25, 0.5)


def profile_layers(profile: Mapping[int, float]) -> tuple[int, int]:
    """(peak, restore) layers of an alignment profile ``{layer: mean MEXA}`` (layers 1..L)."""
    layers = sorted(profile)
    if len(layers) < 3:
        raise EvaluationError(f"a sandwich needs at least 3 layers in the alignment profile; got {layers}")
    peak = max(layers[:-1], key=lambda layer: profile[layer])
    bar = (profile[peak] + profile[layers[-1]]) / 2
    later = [layer for layer in layers if peak < layer < layers[-1]]
    restore = next((layer for layer in later if profile[layer] < bar), later[-1] if later else layers[-1])
    return peak, restore


def diffmean_plan(vectors: Mapping[str, ShiftVector], language: str, layer: int, scale: float):
    """DiffMean towards the pivot at ``layer``, ``alpha = scale *`` the language's gap norm there."""
    vector = vectors[language]
    finite(scale, "scale", f"diffmean {language} at layer {layer}")
    return add_vector(vector, scale * gap_norm(vector, layer), [layer])


def restore_plan(vectors: Mapping[str, ShiftVector], language: str, layer: int, scale: float):
    """The language's own direction (DiffMean from the pivot towards it) re-injected at ``layer``."""
    vector = vectors[language]
    finite(scale, "scale", f"restore {language} at layer {layer}")
    return add_vector(vector, -scale * gap_norm(vector, layer), [layer])


def keeping_layers(profile: Mapping[int, float], sweep: bool) -> list[int]:
    """The layers a language-keeping method runs at: the profile's peak; ``sweep``: also ``s, 2s, ...`` below the
    last, ``s = round(L / 4.5)`` for ``L`` layers.

    Layers are ours: layer ``N`` is the output of block ``N`` counted from 1. With 18 layers the sweep is 4, 8,
    12, 16: CLaS-Bench's decoder-layer indices 3, 7, 11, 15, as its scripts count from 0 (their sweep
    ``4 8 ... 28`` of 32-layer models adds to the output of those 0-based blocks, our layers 5, 9, ..., 29)."""
    peak, _ = profile_layers(profile)
    last = max(profile)
    step = max(1, round(last / 4.5))
    return sorted({*range(step, last, step), peak}) if sweep else [peak]


def diffmean_settings(vectors: Mapping[str, ShiftVector], profile: Mapping[int, float], *, sweep: bool = False):
    """DiffMean (CLaS-Bench) at :func:`keeping_layers`, at one strength (``sweep``: three)."""
    return [
        Setting(
            "diffmean",
            f"layer={layer},alpha={scale:g}x gap",
            layer,
            lambda lang, texts, layer=layer, scale=scale: [(diffmean_plan(vectors, lang, layer, scale), gated([lang]))],
        )
        for layer in keeping_layers(profile, sweep)
        for scale in (SWEEP_SCALES if sweep else DIFFMEAN_SCALES)
    ]


def erase_settings(eraser: Eraser, profile: Mapping[int, float], *, pivot: str = "eng", sweep: bool = False):
    """LEACE at :func:`keeping_layers` (``sweep``: also over the peak and its neighbours), applied to the language
    and to the ``pivot`` alike: it moves every language's mean to the common centroid, not to the pivot's, so only
    the erased pair (pivot erased too) is the pair it makes alike."""
    peak, _ = profile_layers(profile)
    last = max(profile)
    spans = [[layer] for layer in keeping_layers(profile, sweep)]
    if sweep:
        spans.append(list(range(max(1, peak - 1), min(last - 1, peak + 1) + 1)))
    out = []
    for span in spans:
        name = f"LEACE,layers={span[0]}" + (f"-{span[-1]}" if len(span) > 1 else "")
        out.append(
            Setting(
                "erase",
                name,
                span[0],
                lambda lang, texts, span=span: [(erase(eraser, 1.0, span), gated([lang, pivot]))],
            )
        )
    return out


def sandwich_settings(
    vectors: Mapping[str, ShiftVector],
    eraser: Eraser,
    profile: Mapping[int, float],
    *,
    pivot: str = "eng",
    sweep: bool = False,
) -> list[Setting]:
    """DiffMean towards the pivot at the peak, the language's own direction re-injected at the restore layer (one
    strength; ``sweep``: two, and LEACE in the middle)."""
    peak, restore = profile_layers(profile)
    out = []
    for scale in SANDWICH_SCALES if sweep else SANDWICH_SCALES[-1:]:
        out.append(
            Setting(
                "sandwich",
                f"diffmean {peak} alpha={scale:g}x,restore {restore} alpha={scale:g}x",
                peak,
                lambda lang, texts, scale=scale: [
                    (diffmean_plan(vectors, lang, peak, scale), gated([lang])),
                    (restore_plan(vectors, lang, restore, scale), gated([lang])),
                ],
            )
        )
    back = SANDWICH_SCALES[-1]
    if sweep:
        out.append(
            Setting(
                "sandwich",
                f"LEACE {peak},restore {restore} alpha={back:g}x",
                peak,
                lambda lang, texts: [
                    (erase(eraser, 1.0, [peak]), gated([lang, pivot])),
                    (restore_plan(vectors, lang, restore, back), gated([lang])),
                ],
            )
        )
    return out


def alignment_profile(pivot_rows: Mapping[int, object], language_rows: Sequence[Mapping[int, object]]) -> dict:
    """``{layer: mean over languages of MEXA(pivot, language)}`` from per-layer pooled rows."""
    from probes.analysis import mexa

    return {
        layer: sum(mexa(pivot_rows[layer], rows[layer]) for rows in language_rows) / len(language_rows)
        for layer in sorted(pivot_rows)
    }
