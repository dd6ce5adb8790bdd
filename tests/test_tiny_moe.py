"""The tiny MoE of scripts/train_tiny_moe.py and notebook 05: seeded training is reproducible, and a saved model
loads back with the same weights, tokenizer, outputs and training record."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import torch

from scripts.tiny_moe import TRAINING_FILE, TinyMoE, train_tiny_moe

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_moe.py"


def test_training_is_seeded_and_a_saved_model_loads_back(tmp_path):
    first = train_tiny_moe(steps=2, seed=3)
    with torch.no_grad():  # training does not depend on the caller's grad mode
        second = train_tiny_moe(steps=2, seed=3)
    assert first.curve == second.curve and len(first.curve) == 2
    first.save(tmp_path)
    assert (tmp_path / TRAINING_FILE).is_file()
    loaded = TinyMoE.load(tmp_path)
    assert (loaded.steps, loaded.batch_size, loaded.lr, loaded.seed, loaded.curve) == (2, 32, 3e-3, 3, first.curve)
    assert not loaded.model.training
    for (name, saved), (_, back) in zip(first.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(saved, back), name
    text = "Der Hund schläft."
    ids = first.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(loaded.tokenizer(text, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, first.model(ids).logits, rtol=0, atol=0)


def test_the_script_writes_tidy_tables(tmp_path):
    """routing.csv and loss.csv hold the tables given, labelled as the Markdown labels its columns."""
    spec = importlib.util.spec_from_file_location("train_tiny_moe", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def rows(value):
        return pd.DataFrame(
            dict(layer=[1, 2], language=["deu", "deu"], metric=["jsd", "jsd"], value=[value, value + 1])
        )

    steered = {0.5: (rows(20.0), {"eng": 1.0, "deu": 2.5}), 2.0: (rows(30.0), {"eng": 1.0, "deu": 3.0})}
    script.write_tables(tmp_path, rows(0.0), rows(10.0), steered, {"eng": 1.0, "deu": 2.0})
    routing = pd.read_csv(tmp_path / "routing.csv")
    assert list(routing.columns) == ["model", "setting", "layer", "language", "metric", "value"]
    by_setting = routing.groupby(["model", "setting"], sort=False).value.apply(list).to_dict()
    assert by_setting == {
        ("untrained", "none"): [0.0, 1.0],
        ("trained", "none"): [10.0, 11.0],
        ("trained", "promote delta=0.5"): [20.0, 21.0],
        ("trained", "promote delta=2"): [30.0, 31.0],
    }
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert list(loss.columns) == ["setting", "language", "loss"]
    assert loss.set_index(["setting", "language"]).loss.to_dict() == {
        ("none", "eng"): 1.0,
        ("none", "deu"): 2.0,
        ("promote delta=0.5", "eng"): 1.0,
        ("promote delta=0.5", "deu"): 2.5,
        ("promote delta=2", "eng"): 1.0,
        ("promote delta=2", "deu"): 3.0,
    }
