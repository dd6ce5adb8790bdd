"""The error of the steering evaluation."""

from probes.errors import XlalignError


class EvaluationError(XlalignError):
    """Methods, settings or texts the evaluation of steering cannot use: an unknown or impossible method, a
    corpus too small for its translations, a setting gated by detection without a detector."""
