"""Alignment per layer with each steering method off and on (its best setting), from
results/steering_ntrex/evaluation.csv and
results/steering_keep/evaluation.csv: ``python -m scripts.figures.steering_before_after``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from scripts.figures.files import main, read_table
from steer.summary import before_after

RUNS = ("steering_ntrex", "steering_keep")  # every method; the language-keeping sweep
COLUMNS = ("method", "setting", "language", "layer", "metric", "off", "on", "delta")


def draw(results: Path) -> dict[str, Figure]:
    return {f"{run}/before_after": before_after(read_table(results / run / "evaluation.csv", COLUMNS)) for run in RUNS}


if __name__ == "__main__":
    main([draw], __doc__)
