"""The LAPE ablation matrix (loss change of every language when one language's neurons are zeroed) of each
results/lape_ablation_<run>.csv, beside it: ``python -m scripts.figures.lape_ablation``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from probes.plots import ablation_heatmap
from scripts.figures.files import main, read_table

COLUMNS = ("zeroed", "evaluated", "loss_before", "loss_after")
RUNS = {  # as results/lape_ablation.md names them
    "paper8": "run C: the paper's languages",
    "paper8_heldout128": "run C, 128 held-out sentences",
    "8langs": "run A: LAPE over 8 languages",
    "20langs": "run B: LAPE over 20 languages",
}


def draw(results: Path) -> dict[str, Figure]:
    figures = {}
    for path in sorted(results.glob("lape_ablation_*.csv")):
        run = path.stem.removeprefix("lape_ablation_")
        title = f"Zeroing LAPE neurons ({RUNS.get(run, run)})"
        figures[path.stem] = ablation_heatmap(read_table(path, COLUMNS), title=title)
    return figures


if __name__ == "__main__":
    main([draw], __doc__)
