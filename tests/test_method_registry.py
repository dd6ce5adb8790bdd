"""The method registry: a method of one's own is one record and one ``register`` call, then ``evaluate`` and
``find`` take its name; ``find --method diffmean|erase`` write what ``xlalign steer`` applies, equal to the
finders run on their own; one name per method everywhere (old names warn)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import tiny
from probes.artifacts import Eraser, ShiftVector, load_artifact
from probes.capture import capture_corpus, collect_stats
from probes.data import demo_corpus
from probes.find import fit_diffmean, fit_eraser
from probes.model import Site
from steer.apply import steer
from steer.choices import FIND_KINDS, REGISTRY, RENAMED
from steer.convert import add_vector, to_intervention
from steer.evaluate import Setting
from steer.methods import Method, Need, fit_methods, method, names, register, unregister
from steer.schedule import gated
from xlalign import finding
from xlalign.closed_loop import evaluate
from xlalign.cli import main
from xlalign.presets import PRESETS

CORPUS = demo_corpus().subset(["eng", "deu", "rus"], 16)
CLI = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu", "--max-sentences", "12", "--no-progress"]


def halfway(training):
    """The toy method's fit: half the pivot-minus-language difference of sentence means, every layer."""
    out = {}
    for lang in training.languages:
        vectors = {
            layer: 0.5 * (rows[training.pivot].mean(0) - rows[lang].mean(0))
            for layer, rows in training.acts.by_layer("resid", [training.pivot, lang])
        }
        out[lang] = ShiftVector(vectors, "resid", training.pivot, lang, "halfway", {}, dict(training.acts.model), (2,))
    return out


def halfway_settings(vectors, grid):
    return [
        Setting(
            "halfway", "layer=2,alpha=4", 2, lambda lang, texts: [(add_vector(vectors[lang], 4.0, [2]), gated([lang]))]
        )
    ]


TOY = Method(
    "halfway",
    "half the mean shift, at layer 2",
    "resid",
    halfway,
    halfway_settings,
    needs=lambda training: [Need("resid", training.every_layer)],
    finds="shift",
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_a_registered_method_runs_through_evaluate_and_find(toy, tmp_path):
    model, tokenizer = tiny("llama")
    report = evaluate(
        tmp_path / "loop",
        model=model,
        tokenizer=tokenizer,
        corpus=CORPUS,
        methods=["halfway"],
        n_loss=4,
        n_prompts=2,
        progress=False,
    )
    table = pd.read_csv(report.parent / "evaluation.csv")
    assert set(table.method) == {"halfway"} and set(table.language) == {"deu", "rus"}
    loss = table[table.metric == "loss"].set_index("language").delta
    assert (loss != 0).all(), "the plan edits each language's own text"
    assert (table[table.metric == "loss_pivot"].delta == 0).all(), "gated to its language"

    written = finding.find(
        None, tmp_path / "found", method="halfway", model=model, tokenizer=tokenizer, corpus=CORPUS, progress=False
    )
    assert sorted(p.name for p in written) == ["shift.deu.safetensors", "shift.rus.safetensors"]
    pooled = capture_corpus(model, tokenizer, CORPUS, [Site(layer, "resid") for layer in range(1, 5)])
    saved = load_artifact(tmp_path / "found" / "shift.rus.safetensors", model=model)
    for layer in range(1, 5):
        expected = 0.5 * (
            pooled.get(Site(layer, "resid"), "eng").mean(0) - pooled.get(Site(layer, "resid"), "rus").mean(0)
        )
        torch.testing.assert_close(saved.vectors[layer], expected)


def test_registering_checks_names(toy):
    assert "halfway" in names() and method("halfway") is TOY
    with pytest.raises(ValueError, match="built-in method"):
        register(Method("shift", "", "resid", halfway, halfway_settings))
    with pytest.raises(ValueError, match="unknown method 'nope'; choose from shift,"):
        method("nope")


def greedy_tokens(model, tokenizer, prompt: str, plan) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad(), steer(model, plan):
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("name", ["diffmean", "erase"])
def test_find_diffmean_and_erase_write_what_their_finders_fit_and_steer_applies_it(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["find", "--method", name, *CLI, "--out", str(out)]) == 0
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 12)
    layers = range(1, 5)
    if name == "diffmean":
        path = out / "shift.deu.safetensors"
        saved = load_artifact(path, model=model)
        stats = collect_stats(model, tokenizer, corpus, [Site(layer, "resid") for layer in layers], bins=0)
        expected = fit_diffmean(stats, "deu", pivot="eng", layers=layers)
        assert isinstance(saved, ShiftVector) and saved.method == "diffmean" and len(saved.recommended_layers) == 1
        for layer in layers:
            torch.testing.assert_close(saved.vectors[layer], expected.vectors[layer], atol=1e-5, rtol=1e-5)
    else:
        path = out
        saved = load_artifact(path, model=model)
        pooled = capture_corpus(model, tokenizer, corpus, [Site(layer, "resid") for layer in layers])
        expected = fit_eraser(pooled, languages=["eng", "deu"], layers=[1, 2, 3])
        assert isinstance(saved, Eraser) and sorted(saved.layers) == [1, 2, 3]
        for layer in saved.layers:
            torch.testing.assert_close(saved.proj_left[layer], expected.proj_left[layer], atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    prompt = "Guten Morgen"
    assert (
        main(
            ["steer", "--artifact", str(path), "--model", "random:llama", "--prompt", prompt, "--max-new-tokens", "3"]
            + (["--strength", "40"] if name == "diffmean" else [])
        )
        == 0
    )
    printed = capsys.readouterr().out
    strength = 40.0 if name == "diffmean" else 1.0
    on = tokenizer.decode(
        greedy_tokens(model, tokenizer, prompt, [to_intervention(saved, strength=strength)]), skip_special_tokens=True
    )
    assert f"on:  {on.strip()}" in printed or f"on: {on.strip()}" in printed


def test_one_name_per_method_everywhere():
    for preset in PRESETS.values():
        for command, options in preset.options.items():
            chosen = options.get("methods", []) + ([options["method"]] if "method" in options else [])
            assert set(chosen) <= set(REGISTRY), (preset.name, command, chosen)
    assert set(FIND_KINDS.values()) <= set(REGISTRY)
    for name in REGISTRY:
        record = method(name)
        assert record.name == name and (record.finds in FIND_KINDS or record.unsaved), name
    for old, new in RENAMED.items():
        with pytest.warns(FutureWarning, match=f"now called {new!r}"):
            assert method(old).name == new


def test_find_refuses_what_it_cannot_save_and_a_kind_that_is_not_the_methods(tmp_path, capsys):
    assert main(["find", "--method", "sandwich", *CLI, "--out", str(tmp_path / "s")]) == 2
    assert "two edits of the DiffMean vectors" in capsys.readouterr().err
    assert main(["find", "map", "--method", "diffmean", *CLI, "--out", str(tmp_path / "m")]) == 2
    assert "diffmean finds a shift" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_the_shared_pass_gives_each_method_what_it_fits_alone():
    model, tokenizer = tiny("llama")
    together = fit_methods(model, tokenizer, CORPUS, languages=["deu", "rus"], methods=["shift", "diffmean", "lape"])
    for name in ("shift", "diffmean", "lape"):
        alone = fit_methods(model, tokenizer, CORPUS, languages=["deu", "rus"], methods=[name])[name]
        if name == "lape":
            assert all(torch.equal(alone.neurons[lang], together[name].neurons[lang]) for lang in alone.languages)
        else:
            for layer in alone["deu"].vectors:
                torch.testing.assert_close(alone["deu"].vectors[layer], together[name]["deu"].vectors[layer])


def test_a_misspelt_method_option_is_an_error_not_ignored():
    model, tokenizer = tiny("llama")
    with pytest.raises(ValueError, match=r"unknown options \['n_head'\]; the methods read .*n_heads"):
        fit_methods(model, tokenizer, CORPUS, languages=["deu"], methods=["claim"], n_head=3)


def test_an_old_method_name_on_the_command_line_is_one_warning_line(tmp_path, capsys):
    assert main(["find", "--method", "mean", *CLI, "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "xlalign find: warning: method 'mean' is now called 'shift'" in err and "return job(" not in err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["shift.deu.safetensors"]
