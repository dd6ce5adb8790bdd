"""Values from a notebook's kernel to its test without pickle: tensors, numpy arrays, DataFrames, Series and
plain Python values become tensors and tagged plain containers, saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which rebuilds no arbitrary object. Floats keep every bit (float64 columns and
arrays travel as float64 tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

TAG = "__kernel_value__"


def _column(values: np.ndarray | pd.Series | pd.Index):
    """Numbers as a tensor of their dtype; anything else as its items and dtype's name (pandas' ``str``, ...)."""
    if values.dtype.kind in "biuf" and not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        return torch.from_numpy(np.array(values, copy=True))
    return {TAG: "items", "dtype": str(values.dtype), "items": [to_plain(v) for v in values.tolist()]}


def _index(index: pd.Index) -> dict:
    if isinstance(index, pd.RangeIndex):
        return {TAG: "range", "range": (index.start, index.stop, index.step), "name": index.name}
    if isinstance(index, pd.MultiIndex):
        return {
            TAG: "multi",
            "levels": [_index(index.get_level_values(i)) for i in range(index.nlevels)],
            "names": [to_plain(name) for name in index.names],
        }
    return {TAG: "index", "values": _column(index), "name": to_plain(index.name)}


def to_plain(value):
    """``value`` as tensors, tagged dicts, lists, tuples and Python scalars."""
    if isinstance(value, pd.DataFrame):
        return {
            TAG: "frame",
            "columns": _index(value.columns),
            "index": _index(value.index),
            "data": [_column(value.iloc[:, i]) for i in range(value.shape[1])],
        }
    if isinstance(value, pd.Series):
        return {TAG: "series", "index": _index(value.index), "data": _column(value), "name": to_plain(value.name)}
    if isinstance(value, np.ndarray):
        return {TAG: "array", "data": _column(value)} if value.dtype.kind in "biuf" else [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [to_plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot bring a {type(value).__name__} back from the kernel: convert it in the expression")


def _values(data) -> pd.Series:
    if isinstance(data, torch.Tensor):
        return pd.Series(data.numpy())
    items = np.empty(len(data["items"]), dtype=object)
    items[:] = [from_plain(v) for v in data["items"]]
    return pd.Series(items).astype(data["dtype"])


def _from_index(plain: dict) -> pd.Index:
    if plain[TAG] == "range":
        return pd.RangeIndex(*plain["range"], name=plain["name"])
    if plain[TAG] == "multi":
        return pd.MultiIndex.from_arrays([_from_index(level) for level in plain["levels"]], names=plain["names"])
    return pd.Index(_values(plain["values"]), name=plain["name"])


def from_plain(plain):
    """The value :func:`to_plain` was given (tensors stay tensors)."""
    if isinstance(plain, dict) and plain.get(TAG) == "frame":
        frame = pd.DataFrame({i: _values(column) for i, column in enumerate(plain["data"])})
        frame.index, frame.columns = _from_index(plain["index"]), _from_index(plain["columns"])
        return frame
    if isinstance(plain, dict) and plain.get(TAG) == "series":
        series = _values(plain["data"]).rename(plain["name"])
        series.index = _from_index(plain["index"])
        return series
    if isinstance(plain, dict) and plain.get(TAG) == "array":
        return plain["data"].numpy()
    if isinstance(plain, dict):
        return {k: from_plain(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [from_plain(v) for v in plain]
    if isinstance(plain, tuple):
        return tuple(from_plain(v) for v in plain)
    return plain


def save(value, path: str | Path) -> None:
    torch.save(to_plain(value), path)


def load(path: str | Path):
    return from_plain(torch.load(path, weights_only=True))
