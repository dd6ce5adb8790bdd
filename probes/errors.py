"""The root of every xlalign error, and the notices a job gives besides its results, in a module that imports only
the standard library: every layer may import it."""

import warnings


class XlalignError(ValueError):
    """An input xlalign cannot use: a file, an option, a model, a site, an artifact, ... The message says what,
    where and what to do. The command line prints it as one line (any other exception is a bug in xlalign).
    A ``ValueError``, so ``except ValueError`` catches it too."""


class Notice(UserWarning):
    """Something the user should know about a finished or skipped part of a job (never a wrong number)."""


def notice(message: str) -> None:
    """Tell the user ``message`` (a :class:`Notice` warning: Python shows it once per place, the CLI as a note)."""
    warnings.warn(message, Notice, stacklevel=3)
