"""Finders (sklearn-style; fitted on Activations or NeuronStats, never on a model): LAPE and AP neurons, shift
vectors, CLAIM heads, INCLINE / Procrustes maps, language-ID probes."""

from probes.find.ap import APExperts, average_precision
from probes.find.detector import earliest_detector, fit_detector
from probes.find.diffmean import fit_diffmean, gap_norm
from probes.find.erasure import fit_eraser, leace_fitter
from probes.find.errors import FinderError
from probes.find.heads import HeadProbe
from probes.find.langid import LanguageIDProbe
from probes.find.lape import LAPE
from probes.find.maps import (
    SWITCH_STYLES,
    code_switched_pairs,
    fit_incline,
    fit_map,
    fit_procrustes,
    orthogonality_deviation,
)
from probes.find.shifts import SHIFT_METHODS, fit_shift, fit_shift_vectors, logistic_shift, mean_shift, pca_shift, shift

__all__ = [
    "APExperts",
    "FinderError",
    "HeadProbe",
    "LAPE",
    "LanguageIDProbe",
    "SHIFT_METHODS",
    "SWITCH_STYLES",
    "average_precision",
    "code_switched_pairs",
    "earliest_detector",
    "fit_detector",
    "fit_diffmean",
    "fit_eraser",
    "gap_norm",
    "leace_fitter",
    "fit_incline",
    "fit_map",
    "fit_procrustes",
    "fit_shift",
    "fit_shift_vectors",
    "logistic_shift",
    "mean_shift",
    "orthogonality_deviation",
    "pca_shift",
    "shift",
]
