"""Turn `xlalign ablate` output into the LAPE check: a markdown matrix of loss increases and a verdict.

    python scripts/ablation_matrix.py ablation.csv

Rows: the language whose neurons are zeroed; columns: the language evaluated; cells: mean next-token loss
after minus before. LAPE's finding holds for a language when its own loss rises more than any other's.
"""

from __future__ import annotations

import sys

import pandas as pd


def main(path: str) -> None:
    table = pd.read_csv(path)
    table["increase"] = table["loss_after"] - table["loss_before"]
    matrix = table.pivot(index="zeroed", columns="evaluated", values="increase")
    order = [lang for lang in matrix.columns if lang in matrix.index]
    matrix = matrix.loc[order, list(matrix.columns)]
    print("| zeroed \\ evaluated | " + " | ".join(matrix.columns) + " |")
    print("|---|" + "---|" * len(matrix.columns))
    for zeroed, row in matrix.iterrows():
        cells = [f"**{v:+.3f}**" if lang == zeroed else f"{v:+.3f}" for lang, v in row.items()]
        print(f"| {zeroed} | " + " | ".join(cells) + " |")
    holds = [zeroed for zeroed, row in matrix.iterrows() if row[zeroed] > row.drop(zeroed).max()]
    print(f"\nOwn loss rises most for {len(holds)} of {len(matrix)} languages: {', '.join(holds)}.")
    before = table.drop_duplicates("evaluated").set_index("evaluated")["loss_before"]
    print("\nLoss before ablation: " + ", ".join(f"{lang} {value:.3f}" for lang, value in before.items()))


if __name__ == "__main__":
    main(sys.argv[1])
