"""Argument types of the ``xlalign`` command: each turns one option's text into a checked value, or says what is
wrong with it (argparse then exits with status 2 naming the option, before anything is loaded or written)."""

from __future__ import annotations

import argparse
import math

from probes.data.codes import CorpusError, normalize_language


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def ints(text: str) -> list[int]:
    try:
        return [int(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def floats(text: str) -> list[float]:
    return [finite(item) for item in csv_list(text)]


def language(text: str) -> str:
    """A language code in any usual spelling (``de``, ``DEU``, ``deu_Latn``) -> the project's (``deu``)."""
    try:
        return normalize_language(text)
    except CorpusError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def languages(text: str) -> list[str]:
    return [language(item) for item in csv_list(text)]


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def count(least: int):
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value

    count.__name__ = f"integer >= {least}"
    return count


def span(text: str) -> tuple[int, int]:
    start, _, stop = text.partition(":")
    if not (start.isdigit() and stop.isdigit()) or int(start) >= int(stop):
        raise argparse.ArgumentTypeError(f"expected START:STOP with START < STOP, got {text!r}")
    return int(start), int(stop)
