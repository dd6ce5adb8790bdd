"""The xlalign command: capture -> measure -> run, and the errors a user sees."""

from __future__ import annotations

import pandas as pd
import pytest

from probes.directions import ShiftVector
from probes.metrics import ALL_METRICS, mexa, retrieval_top1
from probes.neurons import NeuronSet
from probes.sites import Site
from probes.store import ActivationStore
from steer.cli import main
from steer.evaluate import COLUMNS
from steer.methods import METHODS

SMALL = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu,jpn", "--max-sentences", "12", "--no-progress"]


def test_capture_then_measure_agrees_with_the_metric_functions(tmp_path):
    store_dir = tmp_path / "store"
    assert main(["capture", *SMALL, "--sites", "resid,mlp_act", "--layers", "0,2,4", "--out", str(store_dir)]) == 0
    store = ActivationStore(store_dir)
    assert store.sites == sorted([Site(0, "resid"), Site(2, "resid"), Site(4, "resid"), Site(2, "mlp_act"), Site(4, "mlp_act")])
    csv = tmp_path / "metrics.csv"
    assert main(["measure", str(store_dir), "--metrics", "retrieval_top1,mexa", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == ["layer", "language", "metric", "value"]
    assert len(table) == 3 * 2 * 2
    row = table[(table.layer == 2) & (table.language == "jpn") & (table.metric == "mexa")]
    assert row.value.item() == pytest.approx(mexa(store.get(Site(2, "resid"), "eng"), store.get(Site(2, "resid"), "jpn")))
    row = table[(table.layer == 4) & (table.language == "deu") & (table.metric == "retrieval_top1")]
    assert row.value.item() == pytest.approx(
        retrieval_top1(store.get(Site(4, "resid"), "eng"), store.get(Site(4, "resid"), "deu")))


def test_measure_never_overwrites_silently(tmp_path, capsys):
    store_dir = tmp_path / "store"
    main(["capture", *SMALL, "--out", str(store_dir)])
    csv = tmp_path / "metrics.csv"
    csv.write_text("my notes")
    assert main(["measure", str(store_dir), "--out", str(csv)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert csv.read_text() == "my notes"
    assert main(["measure", str(store_dir), "--out", str(csv), "--overwrite"]) == 0
    assert main(["measure", str(store_dir), "--pivot", "fra", "--out", str(tmp_path / "x.csv")]) == 2
    assert "pivot language 'fra'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_run_writes_report_with_figure_and_refuses_foreign_directories(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "![alignment per layer](alignment_per_layer.png)" in report
    assert (out / "alignment_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "metrics.csv")
    assert set(table.metric) == set(ALL_METRICS) and set(table.language) == {"deu", "jpn", "all"}
    assert sorted(table.layer.unique()) == [0, 1, 2, 3, 4]
    for figure in ("langid_per_layer", "lape_neurons", "before_after", "pareto"):
        assert f"({figure}.png)" in report and (out / f"{figure}.png").is_file()
    assert "Most aligned layers" in report and "Most language-specific layers" in report
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert list(evaluation.columns) == COLUMNS
    assert set(evaluation.method) == set(METHODS) - {"router"} and set(evaluation.language) == {"deu", "jpn"}
    assert (evaluation[evaluation.metric == "loss_pivot"].delta == 0).all()
    generations = pd.read_csv(out / "generations.csv")
    assert len(generations) == 4 and "| language | setting | prompt | off | on |" in report
    assert main(["run", *SMALL, "--out", str(out)]) == 0  # a rerun resumes and rewrites its own outputs
    (out / "thesis.tex").write_text("precious")
    assert main(["run", *SMALL, "--out", str(out)]) == 2
    assert "thesis.tex" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["capture", "--model", "random:llama", "--corpus", "/nonexistent/corpus.tsv", "--out", "x"], "/nonexistent/corpus.tsv"),
        (["capture", *SMALL, "--sites", "mlp", "--out", "x"], "unknown component 'mlp'"),
        (["capture", "--model", "random:nope", "--out", "x"], "no tiny random model for family 'nope'"),
        (["run", *SMALL[:4], "--langs", "deu,jpn", "--out", "x"], "pivot language 'eng'"),
    ],
)
def test_user_errors_exit_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_find_ablate_and_steer_round_trip(tmp_path, capsys):
    neurons = tmp_path / "lape.safetensors"
    assert main(["find", "neurons", "--method", "lape", *SMALL, "--out", str(neurons)]) == 0
    found = NeuronSet.load(neurons)
    assert found.method == "LAPE" and len(found) > 0
    assert main(["find", "neurons", "--method", "lape", *SMALL, "--out", str(neurons)]) == 2  # never overwrites
    assert main(["find", "neurons", "--method", "ap", "--k", "5", *SMALL, "--out", str(tmp_path / "ap.safetensors")]) == 0
    assert NeuronSet.load(tmp_path / "ap.safetensors").neurons["eng"].shape == (5, 2)

    matrix = tmp_path / "matrix.csv"
    assert main(["ablate", str(neurons), *SMALL, "--sentences", "0:6", "--out", str(matrix)]) == 0
    table = pd.read_csv(matrix)
    assert list(table.columns) == ["zeroed", "evaluated", "loss_before", "loss_after"]
    assert set(table.evaluated) == {"eng", "deu", "jpn"} and set(table.zeroed) <= set(found.languages)
    assert table.groupby("evaluated").loss_before.nunique().eq(1).all()

    for kind, method in (("shift", "mean"), ("shift", "claim"), ("map", "incline"), ("map", "procrustes")):
        out = tmp_path / f"{kind}-{method}"
        assert main(["find", kind, "--method", method, "--k", "2", *SMALL, "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == [f"{kind}.deu.safetensors", f"{kind}.jpn.safetensors"]
        capsys.readouterr()
        artifact = out / f"{kind}.jpn.safetensors"
        assert main(["steer", "--artifact", str(artifact), "--model", "random:llama", "--prompt", "Guten Morgen",
                     "--strength", "4", "--max-new-tokens", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        off, on = (line.split(":", 1)[1].strip() for line in lines if line.lstrip().startswith(("off:", "on:")))
        if (kind, method) == ("shift", "mean"):
            assert off != on, "a strong shift changes the continuation"
    shift = ShiftVector.load(tmp_path / "shift-claim" / "shift.deu.safetensors")
    assert shift.component == "head"
    assert main(["steer", "--artifact", str(neurons), "--model", "random:qwen2", "--language", "eng",
                 "--prompt", "x"]) == 2
    assert "made on model 'random:llama'" in capsys.readouterr().err


def test_evaluate_writes_the_table_and_report(tmp_path):
    out = tmp_path / "eval"
    argv = ["evaluate", *SMALL[:4], "--langs", "eng,deu", "--max-sentences", "20", "--methods", "shift,procrustes",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert list(evaluation.columns) == COLUMNS and set(evaluation.method) == {"shift", "procrustes"}
    assert {"mexa", "retrieval_top1", "mexa_mean_after", "loss_target", "loss_pivot", "lang_fidelity"} <= set(evaluation.metric)
    assert "(pareto.png)" in (out / "report.md").read_text()


def test_moe_routing_from_the_command_line(tmp_path, capsys):
    small = ["--model", "random:qwen2_moe", "--corpus", "demo", "--langs", "eng,deu,rus", "--max-sentences", "16",
             "--no-progress"]
    store_dir = tmp_path / "store"
    assert main(["capture", *small, "--sites", "router,resid", "--out", str(store_dir)]) == 0
    store = ActivationStore(store_dir)
    routers = [site.layer for site in store.sites if site.component == "router"]
    assert routers == [1, 2, 3], "Qwen2-MoE's tiny model has a dense MLP in its last layer"
    csv = tmp_path / "routing.csv"
    assert main(["measure", str(store_dir), "--component", "router", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert set(table.metric) == {"jsd", "jsd_norm", "topk_jaccard"} and set(table.layer) == {1, 2, 3}
    assert table[table.metric == "jsd"].value.between(0, 0.7).all()

    out = tmp_path / "run"
    assert main(["run", *small, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Routing (mixture of experts)" in report and (out / "routing_divergence.png").is_file()
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert "router" in set(evaluation.method) and not {"lape", "ap"} & set(evaluation.method)
    assert main(["evaluate", *small, "--methods", "lape", "--out", str(tmp_path / "e")]) == 2
    assert "do not apply to a qwen2_moe model" in capsys.readouterr().err
