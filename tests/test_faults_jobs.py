"""Fault matrix, jobs and command line: what a fault trial found silently ignored, overwritten, left behind or
unclear, each pinned as a clear error (exit 2, nothing written), a note, or the correct behaviour."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ntrex_path, tiny
from probes.artifacts import Artifact
from probes.data import demo_corpus, load_corpus
from probes.model import Site, SiteError
from xlalign import steering
from xlalign.cli import main
from xlalign.closed_loop import evaluate, run
from xlalign.loop import split_note
from xlalign.errors import JobError, Notice
from xlalign.outdir import NOTE

SMALL = demo_corpus().subset(["eng", "deu", "jpn"], 12)
CLI = [
    "--model",
    "random:llama",
    "--corpus",
    "demo",
    "--langs",
    "eng,deu,jpn",
    "--max-sentences",
    "12",
    "--no-progress",
]


@pytest.fixture(scope="module")
def shift_dir(tmp_path_factory):
    """German and Japanese shift vectors of the tiny Llama (``find shift`` on the demo corpus)."""
    out = tmp_path_factory.mktemp("shift") / "shift"
    assert main(["find", "shift", *CLI, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lape_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("lape") / "lape.safetensors"
    assert main(["find", "neurons", "--method", "lape", *CLI, "--out", str(out)]) == 0
    return out


def evaluated(out, **options):
    model, tokenizer = tiny("llama")
    settings = dict(
        model=model, tokenizer=tokenizer, corpus=SMALL, methods=["shift"], n_loss=4, n_prompts=2, progress=False
    )
    return evaluate(out, **{**settings, **options})


# Silently ignored options


@pytest.mark.parametrize("language", ["fra", "jpn"])
def test_steer_refuses_a_language_the_shift_vector_was_not_fitted_for(shift_dir, language, capsys):
    argv = [
        "steer",
        "--model",
        "random:llama",
        "--artifact",
        str(shift_dir / "shift.deu.safetensors"),
        "--prompt",
        "Guten Morgen",
        "--language",
        language,
        "--max-new-tokens",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fitted for 'deu'" in err and f"names '{language}'" in err and err.count("\n") == 1


def test_steer_accepts_the_shift_vectors_own_language_in_any_spelling(shift_dir):
    model, tokenizer = tiny("llama")
    path = shift_dir / "shift.deu.safetensors"
    plain = steering.steer(path, ["Guten Morgen"], model=model, tokenizer=tokenizer, max_new_tokens=3)
    for spelling in ("de", "DEU", "deu_Latn"):
        named = steering.steer(
            path, ["Guten Morgen"], model=model, tokenizer=tokenizer, language=spelling, max_new_tokens=3
        )
        pd.testing.assert_frame_equal(named, plain)


def test_steer_refuses_a_strength_for_a_neuron_set(lape_file, capsys):
    argv = [
        "steer",
        "--model",
        "random:llama",
        "--artifact",
        str(lape_file),
        "--language",
        "deu",
        "--prompt",
        "Hallo",
        "--strength",
        "2",
        "--max-new-tokens",
        "2",
    ]
    assert main(argv) == 2
    assert "--layers and --strength apply to shift vectors" in capsys.readouterr().err


@pytest.mark.parametrize("strength", ["nan", "inf", "-inf"])
def test_steer_refuses_a_non_finite_strength_before_loading_anything(shift_dir, strength, capsys):
    argv = [
        "steer",
        "--model",
        "random:llama",
        "--artifact",
        str(shift_dir / "shift.deu.safetensors"),
        "--prompt",
        "Hallo",
        f"--strength={strength}",
    ]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "--strength: expected a finite number" in capsys.readouterr().err


def test_gate_by_detection_says_which_settings_get_no_gated_twin(tmp_path, capsys):
    out = tmp_path / "gated"
    argv = [
        "evaluate",
        *CLI,
        "--methods",
        "diffmean,shift",
        "--gate-by-detection",
        "--loss-sentences",
        "4",
        "--prompts",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    table = pd.read_csv(out / "evaluation.csv")
    ungated = sorted(
        set(table.loc[~table.setting.str.contains("gate=detected"), "method"])
        - set(table.loc[table.setting.str.contains("gate=detected"), "method"])
    )
    assert ungated == ["diffmean"], "DiffMean edits layer 1, where detection happens: it cannot be gated"
    assert "note: --gate-by-detection: no detection-gated setting for diffmean" in err
    assert "no detection-gated setting for diffmean" in (out / "report.md").read_text()


def test_an_unbalanced_document_split_is_reported(tmp_path, capsys):
    ntrex = load_corpus(ntrex_path()).subset(["eng", "deu"], 20)
    train, test = ntrex.split(test_fraction=0.2)
    assert len(test) / len(ntrex) > 0.3, "NTREX's whole documents overshoot the asked-for share at 20 sentences"
    assert "not the 20% asked for" in split_note(ntrex, test, 0.2)
    balanced = demo_corpus().subset(["eng", "deu"], 50)
    assert split_note(balanced, balanced.split(0.2)[1], 0.2) is None
    with pytest.warns(Notice, match=f"holds out {len(test)} of 20 sentences"):
        report = evaluated(tmp_path / "ntrex", corpus=ntrex)
    assert f"holds out {len(test)} of 20 sentences" in report.read_text()


# Lost results


def test_evaluate_into_its_own_finished_out_recomputes_nothing(tmp_path, monkeypatch):
    import steer.evaluate

    report = evaluated(tmp_path / "e")
    before = {p.name: p.read_bytes() for p in report.parent.iterdir()}
    monkeypatch.setattr(steer.evaluate, "steer", lambda *a, **k: pytest.fail("a finished evaluation ran again"))
    with pytest.warns(Notice, match="already holds this evaluate, complete"):
        assert evaluated(tmp_path / "e") == report
    assert {p.name: p.read_bytes() for p in report.parent.iterdir()} == before


def test_evaluate_never_replaces_another_finished_evaluation_without_overwrite(tmp_path, capsys):
    out = tmp_path / "e"
    report = evaluated(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(JobError, match="n_prompts: 2 there, 3 now"):
        evaluated(out, n_prompts=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    argv = ["evaluate", *CLI, "--methods", "shift", "--loss-sentences", "4", "--out", str(out)]
    assert main([*argv, "--prompts", "2"]) == 0, "the same model, corpus and options: the same evaluation"
    assert "already holds this evaluate, complete" in capsys.readouterr().err
    assert main([*argv, "--prompts", "3"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    evaluated(out, n_prompts=3, overwrite=True)
    table = pd.read_csv(out / "evaluation.csv")
    assert report.read_text() != before["report.md"].decode() and len(table)
    assert '"n_prompts": 3' in (out / NOTE).read_text()


def test_overwrite_first_removes_the_old_report_so_a_killed_rerun_never_mixes_them(tmp_path, monkeypatch):
    import steer.evaluate

    out = tmp_path / "e"
    evaluated(out)
    monkeypatch.setattr(steer.evaluate, "steer", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        evaluated(out, n_prompts=3, overwrite=True)
    assert not (out / "report.md").exists() and not (out / "before_after.png").exists()
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    evaluated(fresh, n_prompts=3)
    evaluated(out, n_prompts=3)  # the same inputs resume, without --overwrite
    pd.testing.assert_frame_equal(pd.read_csv(out / "evaluation.csv"), pd.read_csv(fresh / "evaluation.csv"))


def test_results_of_an_unrecorded_run_are_refused_without_overwrite(tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "evaluation.csv").write_text("method\nshift\n")
    with pytest.raises(JobError, match="inputs it does not record; pass --overwrite"):
        evaluated(out)
    assert (out / "evaluation.csv").read_text() == "method\nshift\n"


def test_run_and_evaluate_never_share_an_out(tmp_path):
    model, tokenizer = tiny("llama")
    out = tmp_path / "r"
    run(out, model=model, tokenizer=tokenizer, corpus=SMALL, methods=["shift"], n_loss=4, n_prompts=2, progress=False)
    with pytest.raises(JobError, match="holds an `xlalign run` result"):
        evaluated(out)


# Arguments validated before anything is written


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_translations=-1), "--translations must be an integer >= 0"),
        (dict(n_loss=0), "--loss-sentences must be an integer >= 1"),
        (dict(test_fraction=1.5), "--test-fraction must be between 0 and 1"),
        (dict(incline_sigmas=[float("nan")]), "--incline-sigmas must be finite"),
        (dict(methods=["nope"]), "--methods: unknown nope"),
        (dict(pivot="fra"), "pivot language 'fra' is not among the corpus languages"),
    ],
)
def test_bad_loop_options_fail_before_any_work_and_write_nothing(tmp_path, options, message):
    with pytest.raises(JobError, match=message):
        evaluated(tmp_path / "e", **options)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--translations", "-1"],
        ["--prompts", "0"],
        ["--test-fraction", "nan"],
        ["--pivot", "xx"],
        ["--incline-sigmas", "0.5,inf"],
    ],
)
def test_bad_loop_options_on_the_command_line_exit_2_and_write_nothing(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", *CLI, *argv, "--out", str(tmp_path / "e")])
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_evaluate_through_tl_runs_the_methods_its_backend_can_and_names_the_others(tmp_path, capsys):
    argv = ["evaluate", *CLI, "--backend", "tl", "--methods", "lape,shift", "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lape: it needs mlp_gate sites" in err and "Choose others with --methods" in err and "shift" in err
    assert not (tmp_path / "e").exists()
    from probes.model import resolve_model
    from steer.methods import available_methods

    bridge, _ = resolve_model(*tiny("llama"), backend="tl")
    assert "lape" not in available_methods(bridge) and "shift" in available_methods(bridge)


def test_find_never_leaves_part_of_its_files_after_a_full_disk(tmp_path, monkeypatch, capsys):
    real, calls = Artifact.save, []

    def full_on_second(self, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, f"writing {path} failed; is the disk full?")
        return real(self, path, **kwargs)

    monkeypatch.setattr(Artifact, "save", full_on_second)
    argv = [
        "find",
        "neurons",
        "--method",
        "ap",
        "--components",
        "mlp_act,down_proj",
        "--k",
        "3",
        *CLI,
        "--out",
        str(tmp_path / "ap"),
    ]
    assert main(argv) == 2
    assert len(calls) == 2 and not list((tmp_path / "ap").glob("*"))
    monkeypatch.undo()
    assert main(argv) == 0, "the rerun is not blocked"


# Language codes and unclear errors


def test_every_language_option_takes_every_usual_spelling(tmp_path, shift_dir):
    assert main(["find", "shift", *CLI, "--pivot", "EN", "--out", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(p.name for p in shift_dir.iterdir())
    model, tokenizer = tiny("llama")
    report = run(
        tmp_path / "r",
        model=model,
        tokenizer=tokenizer,
        corpus=SMALL,
        pivot="en",
        steer_langs=["de"],
        methods=["shift"],
        n_loss=4,
        n_prompts=2,
        progress=False,
    )
    table = pd.read_csv(report.parent / "evaluation.csv")
    assert set(table.language) == {"deu"}


def test_a_directory_given_as_artifact_names_the_files_in_it(shift_dir, capsys):
    assert main(["steer", "--model", "random:llama", "--artifact", str(shift_dir), "--prompt", "Hallo"]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "shift.deu.safetensors" in err


def test_a_negative_layer_is_explained_as_such():
    with pytest.raises(SiteError, match="negative layers do not exist"):
        Site(-1, "resid")


def test_an_abandoned_model_conversion_is_removed_and_a_running_one_kept(tmp_path):
    from probes.model.loading import _remove_abandoned_conversions

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / f".convert-{dead.pid}-abc"
    running = tmp_path / f".convert-{os.getpid()}-def"
    for scratch in (abandoned, running):
        (scratch / "model").mkdir(parents=True)
        (scratch / "model" / "model.safetensors").write_bytes(b"x" * 100)
    _remove_abandoned_conversions(tmp_path)
    assert not abandoned.exists() and running.exists()


def test_router_sites_on_a_dense_model_say_it_is_dense(tmp_path, capsys):
    assert main(["capture", *CLI, "--sites", "router", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "this model has no MoE router (it is dense)" in err and "--layers" not in err
    assert not (tmp_path / "s").exists()


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".metrics.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    assert main(["capture", *CLI, "--sites", "resid.1", "--out", str(tmp_path / "s")]) == 0
    monkeypatch.setattr(Path, "write_text", full)
    assert main(["measure", str(tmp_path / "s"), "--component", "resid", "--out", str(tmp_path / "metrics.csv")]) == 2
    err = capsys.readouterr().err
    assert f"writing {tmp_path / 'metrics.csv'} failed" in err and "is the disk full?" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_measure_takes_the_only_component_a_store_holds(tmp_path):
    for sites, component in (("resid", "resid"), ("mlp_out", "mlp_out")):
        store = tmp_path / sites
        assert main(["capture", *CLI, "--sites", sites, "--layers", "1,2", "--out", str(store)]) == 0
        assert main(["measure", str(store), "--out", str(tmp_path / f"{sites}.csv")]) == 0
        named = ["measure", str(store), "--component", component, "--out", str(tmp_path / f"{sites}.named.csv")]
        assert main(named) == 0
        measured, named = (pd.read_csv(tmp_path / f"{sites}{suffix}.csv") for suffix in ("", ".named"))
        pd.testing.assert_frame_equal(measured, named)
    moe = [
        "--model",
        "random:qwen2_moe",
        "--corpus",
        "demo",
        "--langs",
        "eng,deu",
        "--max-sentences",
        "8",
        "--no-progress",
    ]
    assert main(["capture", *moe, "--sites", "router", "--out", str(tmp_path / "router")]) == 0
    assert main(["measure", str(tmp_path / "router"), "--out", str(tmp_path / "router.csv")]) == 0
    assert {"jsd", "jsd_norm"} <= set(pd.read_csv(tmp_path / "router.csv").metric)


def test_a_plan_that_edits_chosen_tokens_is_not_measured_on_translation_silently():
    import torch

    from conftest import tiny
    from steer.evaluate import Setting, evaluate
    from steer.interventions import AddVector
    from steer.schedule import Schedule
    from steer.translation import SourceSteeringError, on_source

    vector = AddVector({1: torch.ones(64)})
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert on_source([vector], mask)[0][1].decode == "none", "every token: narrowed to the source, no decode step"
    last = Schedule(prefill="last", decode="none")
    assert on_source([(vector, last)], mask) == [(vector, last)], "INCLINE's last prompt token: its own protocol"
    with pytest.raises(SourceSteeringError, match=r"prefill=\(0, 2\)"):
        on_source([(vector, Schedule(prefill=(0, 2)))], mask)
    model, tokenizer = tiny("llama")
    span = Setting("span", "first tokens", 1, lambda lang, texts: [(vector, Schedule(prefill=(0, 2), only=(lang,)))])
    every = Setting("shift", "all", 1, lambda lang, texts: [(vector, Schedule(only=(lang,)))])
    with pytest.warns(Notice, match=r"span \(first tokens\), deu: AddVector edits prefill=\(0, 2\)"):
        table = evaluate(
            model,
            tokenizer,
            demo_corpus().subset(["eng", "deu"], 12),
            [span, every],
            languages=["eng", "deu"],
            n_boot=20,
            n_loss=2,
            n_translations=2,
            shots=2,
        )
    assert set(table[table.metric == "chrf"].method) == {"shift"}, "the span's translation would be another edit"
