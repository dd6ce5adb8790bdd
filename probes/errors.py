"""The root of every xlalign error, in a module that imports nothing: every layer may import it."""


class XlalignError(ValueError):
    """An input xlalign cannot use: a file, an option, a model, a site, an artifact, ... The message says what,
    where and what to do. The command line prints it as one line (any other exception is a bug in xlalign).
    A ``ValueError``, so ``except ValueError`` catches it too."""
