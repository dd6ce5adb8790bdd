"""What a notebook's kernel hands its test comes back equal, bit for bit and dtype for dtype, without pickle."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from kernel_values import load, save


def test_every_kind_of_value_comes_back_equal(tmp_path):
    table = pd.read_csv(io.StringIO("method,setting,layer,value\nshift,a,1,0.12345678901234567\nheads,,2,\n"))
    flags = pd.DataFrame({"x": [1, 2], "y": [True, False]}, index=pd.Index(["deu", "fra"], name="language"))
    pivot = pd.DataFrame(
        np.random.default_rng(0).random((3, 2)),
        index=pd.Index([1, 2, 3], name="layer"),
        columns=pd.Index(["deu", "hin"], name="language"),
    )
    value = {
        "table": table,
        "flags": flags,
        "pivot": pivot,
        "multi": flags.set_index("y", append=True),
        "series": pd.Series([0.1, 0.2], index=[True, False], name="mexa"),
        "array": np.arange(5) / 7,
        "tensor": torch.randn(2, 3, dtype=torch.bfloat16),
        "list": [1, "x", (2, 3.5)],
        "scalar": np.int64(3),
        True: None,
    }
    save(value, tmp_path / "values.pt")
    back = load(tmp_path / "values.pt")
    for name in ("table", "flags", "pivot", "multi"):
        pd.testing.assert_frame_equal(back[name], value[name], check_exact=True)
    pd.testing.assert_series_equal(back["series"], value["series"], check_exact=True)
    assert back["array"].dtype == np.float64 and np.array_equal(back["array"], value["array"])
    assert back["tensor"].dtype == torch.bfloat16 and torch.equal(back["tensor"], value["tensor"])
    assert back["list"] == [1, "x", (2, 3.5)] and type(back["scalar"]) is int and back[True] is None


def test_an_object_it_cannot_carry_is_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot bring a object back"):
        save({"x": object()}, tmp_path / "values.pt")
