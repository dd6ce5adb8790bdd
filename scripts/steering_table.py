"""Turn an `xlalign evaluate` table into the markdown table of results/steering_ntrex.md: one row per method,
setting and language.

    python scripts/steering_table.py out/steer_ntrex/evaluation.csv

Columns: MEXA averaged over the layers from the first edited one (off -> on, change and its 95% paired
bootstrap interval), the same change of retrieval top-1, the relative change of the language's loss, the
change of the pivot's loss and the output-language fidelity of greedy continuations (off -> on); where the
table has them, 3-shot translation chrF (off -> on, change and its interval) and the detector's accuracy.
"""

from __future__ import annotations

import sys

import pandas as pd


def _interval(row) -> str:
    return f"{row.delta:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"


def main(path: str) -> None:
    table = pd.read_csv(path)
    extra = [
        name
        for metric, name in (("chrf", "chrF (off → on, Δ [95% CI])"), ("detection_accuracy", "detected"))
        if metric in set(table["metric"])
    ]
    print(
        "| method | setting | language | MEXA mean over layers ≥ first edited (off → on, Δ [95% CI]) | "
        "retrieval top-1 Δ [95% CI] | target loss | pivot loss Δ | fidelity |" + "".join(f" {e} |" for e in extra)
    )
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for (method, setting, language), unit in table.groupby(["method", "setting", "language"], sort=False):
        row = {metric: part.iloc[0] for metric, part in unit.groupby("metric")}
        mexa, retrieval = row["mexa_mean_after"], row["retrieval_top1_mean_after"]
        loss, pivot = row["loss_target"], row["loss_pivot"]
        fidelity = row.get("line_fidelity")
        cells = [
            method,
            setting,
            language,
            f"{mexa.off:.3f} → {mexa.on:.3f} ({_interval(mexa)})",
            _interval(retrieval),
            f"{100 * loss.delta / loss.off:+.1f}%",
            f"{pivot.delta:+.3f}",
            f"{fidelity.off:.2f} → {fidelity.on:.2f}" if fidelity is not None else "",
        ]
        if "chrf" in set(table["metric"]):
            chrf = row.get("chrf")
            cells.append(
                f"{chrf.off:.1f} → {chrf.on:.1f} ({chrf.delta:+.1f} [{chrf.ci_low:+.1f}, {chrf.ci_high:+.1f}])"
                if chrf is not None
                else ""
            )
        if "detection_accuracy" in set(table["metric"]):
            accuracy = row.get("detection_accuracy")
            cells.append(f"{accuracy.on:.2f}" if accuracy is not None else "")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
