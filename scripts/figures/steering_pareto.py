"""Alignment gain against loss cost, one labelled point per steering setting, from
results/steering_ntrex/evaluation.csv and
results/steering_keep/evaluation.csv: ``python -m scripts.figures.steering_pareto``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from scripts.figures.files import main, read_table
from steer.summary import pareto

RUNS = ("steering_ntrex", "steering_keep")  # every method; the language-keeping sweep
COLUMNS = ("method", "setting", "language", "metric", "off", "delta")


def draw(results: Path) -> dict[str, Figure]:
    return {f"{run}/pareto": pareto(read_table(results / run / "evaluation.csv", COLUMNS)) for run in RUNS}


if __name__ == "__main__":
    main([draw], __doc__)
