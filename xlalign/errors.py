"""What jobs say to the user besides their results: errors that stop a job before it writes anything, and
notices about what a job did differently from what was asked (shown by the CLI as ``note:`` lines)."""

from __future__ import annotations

import warnings

from probes.errors import XlalignError


class JobError(XlalignError):
    """A job that cannot start: an output that would overwrite the user's files, a missing pivot, ..."""


class Notice(UserWarning):
    """Something the user should know about a finished or skipped part of a job (never a wrong number)."""


def notice(message: str) -> None:
    """Tell the user ``message`` (a :class:`Notice` warning: Python shows it once per place, the CLI as a note)."""
    warnings.warn(message, Notice, stacklevel=3)
