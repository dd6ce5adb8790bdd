"""What every figure script shares: the results folder, reading a committed CSV (a missing file or column is named),
and writing each figure as PNG and PDF beside its data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from matplotlib.figure import Figure

from probes.plots import save

RESULTS = Path(__file__).resolve().parents[2] / "results"
FORMATS = (".png", ".pdf")
Draw = Callable[[Path], dict[str, Figure]]  # results folder -> {path of the figure, no suffix: Figure}


class TableError(ValueError):
    """A CSV a figure is drawn from is missing, or lacks a column."""


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The CSV at ``path``, checked to hold every one of ``columns``."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (figures are drawn from the committed CSVs in results/)")
    table = pd.read_csv(path)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise TableError(
            f"{path}: missing column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} "
            f"(it has {', '.join(table.columns)})"
        )
    return table


def write(figures: dict[str, Figure], out: Path) -> list[Path]:
    """Save every figure under ``out`` as PNG and PDF; return the paths written."""
    written = []
    for stem, figure in figures.items():
        for suffix in FORMATS:
            path = out / f"{stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(save(figure, path))
    return written


def main(draws: Sequence[Draw], description: str) -> None:
    """Command line of a figure script (or of all of them): draw from ``--results``, write into ``--out``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the CSVs (default: results/)")
    parser.add_argument("--out", type=Path, help="folder the figures go into (default: the --results folder)")
    args = parser.parse_args()
    try:
        for draw in draws:
            for path in write(draw(args.results), args.out or args.results):
                print(path)
    except TableError as error:
        sys.exit(f"error: {error}")
