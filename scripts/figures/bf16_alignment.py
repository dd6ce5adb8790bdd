"""Alignment per layer in float32 and its change in bfloat16, from results/bf16_alignment.csv:
``python -m scripts.figures.bf16_alignment``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from probes.plots import compare_per_layer
from scripts.figures.files import main, read_table

COLUMNS = ("language", "layer", "metric", "value_reference", "value_other", "difference")


def draw(results: Path) -> dict[str, Figure]:
    table = read_table(results / "bf16_alignment.csv", COLUMNS)
    title = "Gemma 3 270M on NTREX: alignment with English, float32 vs bfloat16"
    return {"bf16_alignment": compare_per_layer(table, "float32", "bfloat16", title=title)}


if __name__ == "__main__":
    main([draw], __doc__)
