"""Alignment per layer with each steering method off and on (its best setting), from
results/steering_ntrex/evaluation.csv: ``python -m scripts.figures.steering_before_after``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from scripts.figures.files import main, read_table
from steer.summary import before_after

COLUMNS = ("method", "setting", "language", "layer", "metric", "off", "on", "delta")


def draw(results: Path) -> dict[str, Figure]:
    evaluation = read_table(results / "steering_ntrex" / "evaluation.csv", COLUMNS)
    return {"steering_ntrex/before_after": before_after(evaluation)}


if __name__ == "__main__":
    main([draw], __doc__)
