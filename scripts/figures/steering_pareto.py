"""Alignment gain against loss cost, one labelled point per steering setting, from
results/steering_ntrex/evaluation.csv: ``python -m scripts.figures.steering_pareto``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from scripts.figures.files import main, read_table
from steer.summary import pareto

COLUMNS = ("method", "setting", "language", "metric", "off", "delta")


def draw(results: Path) -> dict[str, Figure]:
    evaluation = read_table(results / "steering_ntrex" / "evaluation.csv", COLUMNS)
    return {"steering_ntrex/pareto": pareto(evaluation)}


if __name__ == "__main__":
    main([draw], __doc__)
