"""Paper presets: each sets its reference's choices (explicit options win), and runs equal the transcriptions of
the reference rules (MEXA: reference_mexa; INCLINE: the released training loop; Kojima: test_cli)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny
from reference_mexa import reference_mexa
from probes.artifacts import LinearMap
from probes.capture import ActivationStore
from probes.data import demo_corpus
from probes.model import Site
from steer.choices import SIGMAS
from steer.incline import fit_incline_maps
from xlalign import finding, jobs
from xlalign.cli import main, parse_args
from xlalign.presets import PRESETS, PresetError

SMALL = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu,jpn", "--no-progress"]
POSITIONAL = {"measure": ["store"], "find": [None]}  # find: the preset's kind


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_sets_its_options_on_each_command_and_explicit_options_win(name):
    preset = PRESETS[name]
    for command, options in preset.options.items():
        positional = [preset.kind if arg is None else arg for arg in POSITIONAL.get(command, [])]
        args = parse_args([command, *positional, "--out", "x", "--preset", name])
        for option, value in options.items():
            assert getattr(args, option) == value, (name, command, option)
    if "capture" in preset.options:
        assert parse_args(["capture", "--out", "x", "--preset", name, "--pooling", "last"]).pooling == "last"


def test_a_preset_for_another_command_or_kind_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["find", "shift", "--out", "x", "--preset", "kojima"])
    assert exit_.value.code == 2 and "is for `find neurons`, not `find shift`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["steer", "--artifact", "a", "--prompt", "p", "--preset", "mexa"])  # steer takes no preset
    with pytest.raises(PresetError, match="applies to capture, measure, not find"):
        finding.find("neurons", "x", preset="mexa")


def test_the_mexa_preset_is_mexa_on_its_first_100_sentences(tmp_path):
    store_dir, csv = tmp_path / "store", tmp_path / "mexa.csv"
    assert main(["capture", *SMALL, "--preset", "mexa", "--out", str(store_dir)]) == 0
    assert main(["measure", str(store_dir), "--preset", "mexa", "--out", str(csv)]) == 0
    store = ActivationStore(store_dir)
    assert len(store) == 100 and store.pooling == "weighted" and store.sites == [Site(i, "hidden") for i in range(5)]
    table = pd.read_csv(csv)
    assert set(table.metric) == {"mexa"}
    table = table.set_index(["language", "layer"])["value"]
    model, tokenizer = tiny("llama")
    for lang, per_layer in reference_mexa(model, tokenizer, demo_corpus().subset(["eng", "deu", "jpn"], 100)).items():
        assert [table[lang, layer] for layer in range(5)] == pytest.approx(per_layer), lang


def test_the_incline_preset_fits_on_500_pairs_and_sweeps_sigma(tmp_path):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"])
    written = finding.find(
        "map", tmp_path / "maps", model=model, tokenizer=tokenizer, corpus=corpus, preset="incline", progress=False
    )
    fitted = LinearMap.load(written[0])
    expected = fit_incline_maps(model, tokenizer, corpus.subset(None, 500), ["deu"])["deu"]
    assert fitted.component == "mlp_out" and fitted.method == "incline"
    for layer, W in expected.matrices.items():
        np.testing.assert_allclose(fitted.matrices[layer].numpy(), W.numpy(), atol=1e-6)
    args = parse_args(["evaluate", "--out", "x", "--preset", "incline", "--incline-sigmas", "0.3"])
    assert args.incline_sigmas == [0.3] and args.methods == ["incline"]
    assert parse_args(["run", "--out", "x", "--preset", "incline"]).incline_sigmas == list(SIGMAS)


def test_a_python_preset_fills_in_only_what_the_caller_did_not_pass(tmp_path):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 150)
    store = jobs.capture(
        tmp_path / "s", model=model, tokenizer=tokenizer, corpus=corpus, preset="mexa", pooling="mean", progress=False
    )
    assert len(store) == 100 and store.pooling == "mean" and store.sites[0].component == "hidden"
    assert torch.equal(
        store.get(Site(2, "hidden"), "deu"),
        jobs.capture(
            tmp_path / "t",
            model=model,
            tokenizer=tokenizer,
            corpus=corpus.subset(None, 100),
            pooling="mean",
            progress=False,
        ).get(Site(2, "hidden"), "deu"),
    )
