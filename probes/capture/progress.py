"""Progress bars: a function draws its own bar, none, or advances the caller's one overall bar.

Only the loops that advance a bar add their steps to its total (:func:`add_steps`), so one bar passed down
through several layers counts every step once; whoever owns the bar names the phase and language.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol, Union

from tqdm.auto import tqdm


class Bar(Protocol):
    def update(self, n: float = 1) -> object: ...

    def set_description(self, desc: str) -> object: ...


# True: the function's own bar; False: none; a tqdm-like bar: advance it (a job's one overall bar).
Progress = Union[bool, Bar]


class _Silent:
    total = 0

    def update(self, n: float = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def refresh(self) -> None:
        pass


@contextmanager
def progress_bar(progress: Progress, phase: str) -> Iterator[Bar]:
    """The bar for ``phase``: a new one (closed at the end), none, or the caller's."""
    if progress is True:
        with tqdm(total=0, desc=phase, unit="step", leave=False) as bar:
            yield bar
    elif progress is False or progress is None:
        yield _Silent()
    else:
        yield progress


def add_steps(bar: Bar, steps: int) -> None:
    """Grow ``bar``'s total by the ``steps`` the caller is about to advance it by."""
    if hasattr(bar, "total"):
        bar.total = (bar.total or 0) + steps
        if hasattr(bar, "refresh"):
            bar.refresh()
