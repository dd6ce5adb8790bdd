"""The error of the finders."""

from probes.errors import XlalignError


class FinderError(XlalignError):
    """Activations, statistics or options a finder cannot fit on: too few languages, mismatched shapes or
    layers, an unknown method."""
