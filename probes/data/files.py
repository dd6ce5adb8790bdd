"""Writes that leave either the old file or the complete new one, never a partial file.

Files come out with the permissions the user's umask gives a new file (as ``open()`` would), whatever the
writer (safetensors writes 0600). A process killed while writing (``kill -9``) leaves its temporary file
(``.NAME.tmpSUFFIX`` beside NAME); :func:`remove_leftovers` deletes those, and only those.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it (a full
    disk is an OSError naming ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(
            error.errno,
            f"writing {path} failed: {error.strerror or 'no space left'}; is the disk full? Nothing partial was left",
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def temporary_path(path: Path) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under."""
    return path.with_name(f".{path.name}.tmp{path.suffix}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one :func:`atomic_path` writes under (``.NAME.tmpSUFFIX``, SUFFIX NAME's suffix)."""
    if not name.startswith("."):
        return False
    cut = name.find(".tmp", 2)
    while cut > 0:
        if temporary_path(Path(name[1:cut])).name == name:
            return True
        cut = name.find(".tmp", cut + 1)
    return False


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_path` left in ``directory`` (not below it); only
    call it where no writer is running. Returns what was deleted."""
    directory = Path(directory)
    found = [path for path in directory.glob(".*.tmp*") if path.is_file() and is_temporary(path.name)]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
