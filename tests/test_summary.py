"""The goal check and the Pareto front table of a steering evaluation, on a table built by hand."""

from __future__ import annotations

import pandas as pd

from steer.evaluate import COLUMNS
from steer.summary import front_table, meets_goal


def unit(method, setting, language, gain, ci_low, loss_off, loss_on, fidelity):
    head = (method, setting, language, 3)
    return [
        (*head, "mexa_mean_after", 0.2, 0.2 + gain, gain, ci_low, ci_low + 0.1),
        (*head, "loss_target", loss_off, loss_on, loss_on - loss_off, None, None),
        (*head, "line_fidelity", 1.0, fidelity, fidelity - 1.0, None, None),
    ]


def table() -> pd.DataFrame:
    rows = []
    for language in ("deu", "rus"):
        rows += unit("diffmean", "strong", language, 0.30, 0.05, 4.0, 4.1, 1.0)  # +2.5%: meets
        rows += unit("diffmean", "weak", language, 0.05, 0.01, 4.0, 4.0, 1.0)  # gain too small
        rows += unit("erase", "far", language, 0.40, 0.10, 4.0, 6.0, 0.5)  # loss +50%, fidelity 0.5
    rows += unit("sandwich", "one", "deu", 0.20, -0.01, 4.0, 4.0, 1.0)  # interval reaches 0
    rows += unit("sandwich", "one", "rus", 0.20, 0.02, 4.0, 4.1, 0.875)  # fidelity below 0.95
    return pd.DataFrame(rows, columns=COLUMNS)


def test_meets_goal_checks_gain_interval_fidelity_and_loss():
    checked = meets_goal(table()).set_index(["method", "setting", "language"])["meets"].sort_index()
    assert checked[("diffmean", "strong", "deu")] and checked[("diffmean", "strong", "rus")]
    assert not checked[("diffmean", "weak")].any() and not checked[("erase", "far")].any()
    assert not checked[("sandwich", "one")].any()


def test_front_table_keeps_undominated_settings_with_their_goal_count():
    front = front_table(table()).set_index(["method", "setting"])
    # cost (relative loss change): weak 0%, sandwich 1.25%, strong 2.5%, far 50%; gain .05, .20, .30, .40
    assert list(front.index) == [("diffmean", "weak"), ("sandwich", "one"), ("diffmean", "strong"), ("erase", "far")]
    assert front.loc[("diffmean", "strong"), "meeting"] == 2 and front.loc[("erase", "far"), "meeting"] == 0
    assert front.loc[("sandwich", "one"), "fidelity"] == (1.0 + 0.875) / 2
