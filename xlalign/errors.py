"""What jobs say to the user besides their results: errors that stop a job before it writes anything, and
notices about what a job did differently from what was asked (shown by the CLI as ``note:`` lines)."""

from __future__ import annotations

from probes.errors import Notice, XlalignError, notice

__all__ = ["JobError", "Notice", "notice"]


class JobError(XlalignError):
    """A job that cannot start: an output that would overwrite the user's files, a missing pivot, ..."""
