"""Alignment per layer in two dtypes, side by side: the per-layer difference of each metric, from two
``xlalign measure`` CSVs of the same corpus and model (e.g. float32 and bfloat16 stores).

    python scripts/dtype_alignment.py fp32.csv bf16.csv --out results/bf16_alignment.csv

Prints the largest |difference| per metric and language (and the layer where it is) and writes every row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def compare(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    keys = ["language", "layer", "metric"]
    joined = reference[keys + ["value"]].merge(other[keys + ["value"]], on=keys, suffixes=("_reference", "_other"))
    if len(joined) != len(reference) or len(joined) != len(other):
        raise ValueError(
            f"the two tables hold different rows ({len(reference)} and {len(other)}, {len(joined)} shared)"
        )
    joined["difference"] = joined["value_other"] - joined["value_reference"]
    return joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="metrics CSV of the reference dtype (float32)")
    parser.add_argument("other", type=Path, help="metrics CSV of the other dtype (bfloat16)")
    parser.add_argument("--out", type=Path, required=True, help="CSV of every row with its difference")
    args = parser.parse_args()
    joined = compare(pd.read_csv(args.reference), pd.read_csv(args.other))
    joined.to_csv(args.out, index=False)
    worst = joined.loc[joined.groupby(["metric", "language"])["difference"].apply(lambda d: d.abs().idxmax())]
    print(worst[["metric", "language", "layer", "value_reference", "value_other", "difference"]].to_string(index=False))
    print(f"\nlargest |difference| over every layer and language: {joined['difference'].abs().max():.4f}")


if __name__ == "__main__":
    main()
