"""The error of the steering evaluation."""

from probes.errors import XlalignError


class EvaluationError(XlalignError):
    """Methods, settings or texts the evaluation of steering cannot use: an unknown or impossible method, a
    corpus too small for its translations, a setting gated by detection without a detector."""


class EngineError(XlalignError):
    """A plan, request or engine mode an inference engine (vLLM) cannot run as the ``hf`` backend would: refused
    before anything is generated, never run unsteered."""
