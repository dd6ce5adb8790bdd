"""The xlalign command: capture -> measure -> run, find/ablate/steer, and the errors a user sees. Each full
pipeline runs once per family (module fixtures); every test checks values against the Python API or a hand
computation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import tiny
from reference_mexa import reference_mexa
from incline_reference import reference_generation
from probes.analysis import ALL_METRICS, NEURON_METRICS, mexa, retrieval_top1
from probes.artifacts import LinearMap, NeuronSet, ShiftVector
from probes.capture import ActivationStore, capture, capture_corpus
from probes.data import demo_corpus
from probes.find import APExperts
from probes.model import Site, blocks, load_model, locate
from steer.evaluate import COLUMNS, next_token_loss
from steer.translation import chrf, translate, translation_task
from steer.methods import fit_methods, names
from steer.methods import method as registered
from xlalign.cli import build_parser, main

SMALL = [
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
MOE = [
    "--model",
    "random:qwen2_moe",
    "--corpus",
    "demo",
    "--langs",
    "eng,deu,rus",
    "--max-sentences",
    "16",
    "--no-progress",
]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "run"
    assert main(["run", *MOE, "--out", str(out)]) == 0
    return out


def test_capture_and_measure_by_default_report_mexa_as_its_released_code_computes_it(tmp_path):
    store_dir, csv = tmp_path / "store", tmp_path / "metrics.csv"
    assert main(["capture", *SMALL, "--out", str(store_dir)]) == 0
    assert main(["measure", str(store_dir), "--metrics", "mexa", "--out", str(csv)]) == 0
    store = ActivationStore(store_dir)
    assert store.pooling == "weighted" and store.sites == [Site(layer, "hidden") for layer in range(5)]
    table = pd.read_csv(csv).set_index(["language", "layer"])["value"]
    model, tokenizer = load_model("random:llama")
    for lang, per_layer in reference_mexa(model, tokenizer, demo_corpus().subset(["eng", "deu", "jpn"], 12)).items():
        assert [table[lang, layer] for layer in range(5)] == pytest.approx(per_layer), lang


def test_capture_then_measure_agrees_with_the_metric_functions(tmp_path):
    store_dir = tmp_path / "store"
    argv = [
        "capture",
        *SMALL,
        "--sites",
        "resid,mlp_act",
        "--layers",
        "0,2,4",
        "--pooling",
        "mean",
        "--out",
        str(store_dir),
    ]
    assert main(argv) == 0
    store = ActivationStore(store_dir)
    assert store.sites == sorted(
        [Site(0, "resid"), Site(2, "resid"), Site(4, "resid"), Site(2, "mlp_act"), Site(4, "mlp_act")]
    )
    csv = tmp_path / "metrics.csv"
    assert (
        main(["measure", str(store_dir), "--component", "resid", "--metrics", "retrieval_top1,mexa", "--out", str(csv)])
        == 0
    )
    table = pd.read_csv(csv)
    assert list(table.columns) == ["layer", "language", "metric", "value"]
    assert len(table) == 3 * 2 * 2
    row = table[(table.layer == 2) & (table.language == "jpn") & (table.metric == "mexa")]
    assert row.value.item() == pytest.approx(
        mexa(store.get(Site(2, "resid"), "eng"), store.get(Site(2, "resid"), "jpn"))
    )
    row = table[(table.layer == 4) & (table.language == "deu") & (table.metric == "retrieval_top1")]
    assert row.value.item() == pytest.approx(
        retrieval_top1(store.get(Site(4, "resid"), "eng"), store.get(Site(4, "resid"), "deu"))
    )


def test_measure_never_overwrites_silently(tmp_path, capsys):
    store_dir = tmp_path / "store"
    main(["capture", *SMALL, "--sites", "hidden.1", "--out", str(store_dir)])
    csv = tmp_path / "metrics.csv"
    csv.write_text("my notes")
    assert main(["measure", str(store_dir), "--out", str(csv)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert csv.read_text() == "my notes"
    assert main(["measure", str(store_dir), "--out", str(csv), "--overwrite"]) == 0
    assert main(["measure", str(store_dir), "--pivot", "fra", "--out", str(tmp_path / "x.csv")]) == 2
    assert "pivot language 'fra'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_run_writes_report_with_figures_and_numbers(llama_run):
    out = llama_run
    report = (out / "report.md").read_text()
    assert "![alignment per layer](alignment_per_layer.png)" in report
    assert (out / "alignment_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "metrics.csv")
    assert set(table.metric) == set(ALL_METRICS) and set(table.language) == {"deu", "jpn", "all"}
    assert sorted(table.layer.unique()) == [0, 1, 2, 3, 4]
    store = ActivationStore(out / "store")
    assert store.pooling == "weighted" and {site.component for site in store.sites} == {"hidden"}
    mexa_table = table[table.metric == "mexa"].set_index(["language", "layer"])["value"]
    model, tokenizer = load_model("random:llama")
    for lang, per_layer in reference_mexa(model, tokenizer, demo_corpus().subset(["eng", "deu", "jpn"], 12)).items():
        assert [mexa_table[lang, layer] for layer in range(5)] == pytest.approx(per_layer), lang  # MEXA's own rule
    for figure in ("langid_per_layer", "lape_neurons", "before_after", "pareto"):
        assert f"({figure}.png)" in report and (out / f"{figure}.png").is_file()
    train, _ = demo_corpus().subset(["eng", "deu", "jpn"], 12).split(test_fraction=0.2)
    lape = fit_methods(
        model, tokenizer, train, languages=["deu", "jpn"], methods=["lape"], lape_languages=train.languages
    )["lape"]
    drawn = pd.read_csv(out / "lape_neurons.csv")  # the LAPE figure's data: the counts of the run's neurons
    assert drawn.to_dict("records") == lape.count_per_layer().to_dict("records") and drawn.n_neurons.sum() > 0
    assert "Most aligned layers" in report and "Most language-specific layers" in report
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert list(evaluation.columns) == COLUMNS
    assert set(evaluation.method) == {n for n in names() if registered(n).default} - {"router", "steermoe"} and set(
        evaluation.language
    ) == {"deu", "jpn"}
    pivot_loss = evaluation[evaluation.metric == "loss_pivot"].set_index("setting").delta
    erased = pivot_loss.index.str.contains("leace", case=False)
    assert (pivot_loss[~erased] == 0).all(), "every plan but LEACE's is gated to its language"
    assert (pivot_loss[erased] != 0).all(), "LEACE erases the pivot too"
    generations = pd.read_csv(out / "generations.csv")
    assert len(generations) == 4 and "| language | setting | prompt | off | on |" in report


def test_run_refuses_a_directory_with_the_users_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["run", *SMALL, "--out", str(out)]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and (out / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["capture", "--model", "random:llama", "--corpus", "/nonexistent/corpus.tsv", "--out", "x"],
            "/nonexistent/corpus.tsv",
        ),
        (["capture", *SMALL, "--sites", "mlp", "--out", "x"], "unknown component 'mlp'"),
        (["capture", "--model", "random:nope", "--out", "x"], "no tiny random model for family 'nope'"),
        (["run", *SMALL[:4], "--langs", "deu,jpn", "--out", "x"], "pivot language 'eng'"),
        (["capture", *SMALL, "--sentences", "5:40", "--out", "x"], "rows 5:40 of demo: need 0 <= start < stop <= 12"),
        (["capture", *SMALL, "--batch-size", "0", "--out", "x"], "batch_size must be a positive int"),
    ],
)
def test_user_errors_exit_2_with_a_clear_message_and_write_nothing(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def greedy(model, tokenizer, prompt: str, n: int, edits: dict) -> str:
    """Greedy continuation with ``edits`` ({module: fn(x) -> x}) as raw torch hooks on module outputs (or, for
    ``(module, 'input')`` keys, inputs): an oracle independent of xlalign's hooks."""
    handles = []
    for key, fn in edits.items():
        if isinstance(key, tuple):
            handles.append(key[0].register_forward_pre_hook(lambda _m, args, fn=fn: (fn(args[0]), *args[1:])))
        else:
            handles.append(key.register_forward_hook(lambda _m, _a, out, fn=fn: fn(out)))
    try:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        for handle in handles:
            handle.remove()
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def expected_edits(model, path, strength: float) -> dict:
    """What applying the artifact at ``path`` means, written by hand from its tensors."""
    if path.name.startswith("shift"):
        shift = ShiftVector.load(path)
        if shift.component == "head":  # add the head vectors to the output projection's per-head input
            return {
                (locate(model, Site(layer, "head"))[0], "input"): (lambda x, v=v: x + strength * v.reshape(-1))
                for layer, v in shift.vectors.items()
            }
        (layer,) = shift.recommended_layers
        return {blocks(model)[layer - 1]: lambda x: x + strength * shift.vectors[layer]}
    fitted = LinearMap.load(path)
    edits = {}
    for layer in fitted.recommended_layers:
        W, source, target = fitted.matrices[layer], fitted.mean_source.get(layer), fitted.mean_pivot.get(layer)

        def interpolate(x, W=W, source=source, target=target):
            mapped = ((x - source) @ W + target) if source is not None else x @ W
            return (1 - strength) * x + strength * mapped

        if layer == 0:
            edits[(blocks(model)[0], "input")] = interpolate
        else:
            edits[blocks(model)[layer - 1]] = interpolate
    return edits


def test_find_ablate_and_steer_round_trip(tmp_path, capsys):
    model, tokenizer = tiny("llama")
    neurons = tmp_path / "lape.safetensors"
    assert main(["find", "neurons", "--method", "lape", *SMALL, "--out", str(neurons)]) == 0
    found = NeuronSet.load(neurons)
    assert found.method == "LAPE" and len(found) > 0
    assert main(["find", "neurons", "--method", "lape", *SMALL, "--out", str(neurons)]) == 2  # never overwrites
    assert (
        main(["find", "neurons", "--method", "ap", "--k", "5", *SMALL, "--out", str(tmp_path / "ap.safetensors")]) == 0
    )
    assert NeuronSet.load(tmp_path / "ap.safetensors").neurons["eng"].shape == (5, 2)

    matrix = tmp_path / "matrix.csv"
    assert main(["ablate", str(neurons), *SMALL, "--sentences", "0:6", "--out", str(matrix)]) == 0
    table = pd.read_csv(matrix)
    assert list(table.columns) == ["zeroed", "evaluated", "loss_before", "loss_after"]
    assert set(table.evaluated) == {"eng", "deu", "jpn"} and set(table.zeroed) <= set(found.languages)
    held = demo_corpus().subset(["eng", "deu", "jpn"], 12).rows(0, 6)
    for lang in held.languages:
        assert table[table.evaluated == lang].loss_before.tolist() == pytest.approx(
            [next_token_loss(model, tokenizer, held.texts(lang))] * len(set(table.zeroed))
        )
    capsys.readouterr()

    prompt = "Guten Morgen"
    plain = greedy(model, tokenizer, prompt, 3, {})
    for kind, method in (("shift", "shift"), ("shift", "claim"), ("map", "incline"), ("map", "procrustes")):
        out = tmp_path / f"{kind}-{method}"
        assert main(["find", kind, "--method", method, "--k", "2", *SMALL, "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == [f"{kind}.deu.safetensors", f"{kind}.jpn.safetensors"]
        capsys.readouterr()
        artifact = out / f"{kind}.jpn.safetensors"
        assert (
            main(
                [
                    "steer",
                    "--artifact",
                    str(artifact),
                    "--model",
                    "random:llama",
                    "--prompt",
                    prompt,
                    "--strength",
                    "4",
                    "--max-new-tokens",
                    "3",
                ]
            )
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        off, on = (line.split(":", 1)[1].strip() for line in lines if line.lstrip().startswith(("off:", "on:")))
        assert off == plain.strip()
        if (kind, method) == ("shift", "shift"):
            assert on != off, "a strong shift changes the continuation"
        if method == "incline":  # the released code's rule: the last prompt token, targets from a clean pass
            fitted = LinearMap.load(artifact)
            assert fitted.component == "mlp_out" and sorted(fitted.matrices) == list(range(1, 5))
            tokens, _ = reference_generation(model, tokenizer, prompt, fitted, 4.0, 1.0, new_tokens=3)
            assert on == tokenizer.decode(tokens, skip_special_tokens=True).strip()
        else:
            assert on == greedy(model, tokenizer, prompt, 3, expected_edits(model, artifact, 4.0)).strip(), (
                kind,
                method,
            )
    assert (
        main(["steer", "--artifact", str(neurons), "--model", "random:qwen2", "--language", "eng", "--prompt", "x"])
        == 2
    )
    assert "made on model 'random:llama'" in capsys.readouterr().err


def test_kojima_experts_over_every_linear_projection_and_forcing_them_all(tmp_path, capsys):
    """find neurons --preset kojima (--components linear, mean pooling) ranks the units of all linear projections
    together (one file per component; here 6 top and 6 bottom instead of 1000); steer with every file forces the
    pivot's units to on_p50 on those modules' outputs."""
    model, tokenizer = tiny("llama")
    out = tmp_path / "kojima"
    assert (
        main(["find", "neurons", "--preset", "kojima", "--k", "6", "--bottom-k", "6", *SMALL, "--out", str(out)]) == 0
    )
    components = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"ap.{c}.safetensors" for c in components)
    corpus = demo_corpus().subset(["eng", "deu", "jpn"], 12)
    sites = [Site(layer, c) for c in components for layer in range(1, 5)]
    direct = APExperts(k=6, bottom_k=6).fit(capture_corpus(model, tokenizer, corpus, sites), components).neuron_sets_
    found = {c: NeuronSet.load(out / f"ap.{c}.safetensors") for c in components}
    for c in components:
        for lang in corpus.languages:
            assert torch.equal(found[c].neurons[lang], direct[c].neurons[lang])
    assert sum(len(found[c].neurons["eng"]) for c in components) == 12
    capsys.readouterr()
    prompt = "Guten Morgen"
    argv = ["steer", "--model", "random:llama", "--prompt", prompt, "--language", "eng", "--max-new-tokens", "3"]
    assert main([*argv, *(x for c in components for x in ("--artifact", str(out / f"ap.{c}.safetensors")))]) == 0
    on = capsys.readouterr().out.splitlines()[-1].split(":", 1)[1].strip()

    def force(units, values):
        def edit(x):
            x = x.clone()
            x[..., units] = values
            return x

        return edit

    edits = {}
    for c, neurons in found.items():
        rows, values = neurons.neurons["eng"], neurons.values["eng"]["on_p50"].float()
        for layer in rows[:, 0].unique().tolist():
            here = rows[:, 0] == layer
            edits[locate(model, Site(layer, c))[0]] = force(rows[here, 1], values[here])
    assert on == greedy(model, tokenizer, prompt, 3, edits).strip()


def test_evaluate_writes_the_table_and_report_with_the_right_numbers(tmp_path):
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        *SMALL[:4],
        "--langs",
        "eng,deu",
        "--max-sentences",
        "20",
        "--methods",
        "shift,procrustes",
        "--translations",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert list(evaluation.columns) == COLUMNS and set(evaluation.method) == {"shift", "procrustes"}
    assert {"mexa", "retrieval_top1", "mexa_mean_after", "loss_target", "loss_pivot", "line_fidelity"} <= set(
        evaluation.metric
    )
    report = (out / "report.md").read_text()
    assert "(pareto.png)" in report and "3-shot translation chrF change" in report
    model, tokenizer = tiny("llama")
    _, test = demo_corpus().subset(["eng", "deu"], 20).split(test_fraction=0.2)
    task = translation_task(test, "deu", "eng", 1)
    chrf_rows = evaluation[evaluation.metric == "chrf"]
    assert set(chrf_rows.language) == {"deu"} and len(chrf_rows) == evaluation.groupby(["method", "setting"]).ngroups
    assert chrf_rows.off.tolist() == [chrf(translate(model, tokenizer, task), task.references)] * len(chrf_rows)
    loss = evaluation[evaluation.metric == "loss_target"]
    assert loss.off.tolist() == pytest.approx([next_token_loss(model, tokenizer, test.texts("deu")[:32])] * len(loss))
    site = Site(3, "resid")
    unsteered = {lang: capture(model, tokenizer, test.texts(lang), [site])[site] for lang in ("eng", "deu")}
    row = evaluation[(evaluation.metric == "mexa") & (evaluation.layer == 3)]
    assert row.off.tolist() == pytest.approx([mexa(unsteered["eng"], unsteered["deu"])] * len(row))


def test_an_moe_run_pools_its_steering_evaluation_as_its_header_says(moe_run):
    """The run's header names one pooling (``mean`` in MoE models); the unsteered MEXA of its evaluation is that
    pooling's, on the held-out split."""
    assert "pooling: `mean`" in (moe_run / "report.md").read_text()
    _, test = demo_corpus().subset(["eng", "deu", "rus"], 16).split(test_fraction=0.2)
    model, tokenizer = load_model("random:qwen2_moe")
    evaluation = pd.read_csv(moe_run / "evaluation.csv")
    row = evaluation[(evaluation.metric == "mexa") & (evaluation.language == "deu")].iloc[0]
    site = Site(int(row.layer), "hidden")
    pooled = capture_corpus(model, tokenizer, test, [site], pooling="mean")
    assert row.off == pytest.approx(mexa(pooled.get(site, "eng"), pooled.get(site, "deu")))


def test_moe_routing_from_the_command_line(tmp_path, capsys, moe_run):
    store_dir = tmp_path / "store"
    assert main(["capture", *MOE, "--sites", "router,resid", "--out", str(store_dir)]) == 0
    store = ActivationStore(store_dir)
    routers = [site.layer for site in store.sites if site.component == "router"]
    assert routers == [1, 2, 3], "Qwen2-MoE's tiny model has a dense MLP in its last layer"
    csv = tmp_path / "routing.csv"
    assert main(["measure", str(store_dir), "--component", "router", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert set(table.metric) == {"jsd", "jsd_norm", "topk_jaccard"} and set(table.layer) == {1, 2, 3}
    assert table[table.metric == "jsd"].value.between(0, 0.7).all()
    report = (moe_run / "report.md").read_text()
    assert "## Routing (mixture of experts)" in report and (moe_run / "routing_divergence.png").is_file()
    evaluation = pd.read_csv(moe_run / "evaluation.csv")
    assert {"router", "steermoe"} <= set(evaluation.method) and not {"lape", "ap"} & set(evaluation.method)
    steermoe = evaluation[(evaluation.method == "steermoe") & (evaluation.metric == "loss_target")]
    assert (steermoe.delta != 0).all(), "forcing and banning experts changes the language's loss"
    assert main(["evaluate", *MOE, "--methods", "lape", "--out", str(tmp_path / "e")]) == 2
    assert "lape: it needs mlp_gate sites: mlp_gate.1: component 'mlp_gate' does not exist in a qwen2_moe model" in (
        capsys.readouterr().err
    )


def test_help_shows_defaults_metric_names_and_every_model_option(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("xlalign 0.")
    with pytest.raises(SystemExit):
        parser.parse_args(["measure", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in (*ALL_METRICS, *NEURON_METRICS)) and "(default: eng)" in text
    for command in ("capture", "find", "ablate", "steer", "evaluate", "run"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for option in ("--device", "--dtype", "--batch-size", "--max-length", "(default: cpu)", "(default: float32)"):
            assert option in text, (command, option)


def test_errors_are_one_line_unless_debug_and_ctrl_c_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import xlalign.jobs

    argv = ["capture", *SMALL, "--sites", "resid.1", "--out", str(tmp_path / "s")]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "meta.json").write_text("{broken")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "meta.json is not valid JSON" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="not valid JSON"):
        main(["--debug", *argv])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xlalign.jobs, "capture_to_store", interrupted)
    assert main(["capture", *SMALL, "--out", str(tmp_path / "t")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; finished shards are kept; repeat the command to resume" in err


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    import probes.capture.shards

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise safetensors.SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(probes.capture.shards, "save_file", full)
    assert main(["capture", *SMALL, "--sites", "resid.1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the disk full? Nothing partial was left" in err
    assert not list((tmp_path / "s").rglob("*.safetensors")) and not list((tmp_path / "s").rglob("*.tmp*"))


INTERRUPTED_CAPTURE = """
import signal, sys, time, pathlib
import probes.capture.store as store
from xlalign.cli import main

# A job started in the background of a non-interactive shell inherits SIGINT ignored, and Python then leaves it
# ignored: restore what a terminal's Ctrl-C meets.
signal.signal(signal.SIGINT, signal.default_int_handler)

real, calls = store.capture, []

def capture(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the first shard is written: wait here for the signal
        pathlib.Path(sys.argv[1]).touch()
        for _ in range(1200):  # short sleeps: a SIGINT delivered to a torch worker thread does not wake a long one
            time.sleep(0.1)
    return real(*args, **kwargs)

store.capture = capture
sys.exit(main(sys.argv[2:]))
"""


def test_sigint_during_capture_keeps_finished_shards_and_resumes_to_the_same_store(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    argv = ["capture", *SMALL, "--sites", "resid.1,resid.3"]
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_CAPTURE, str(ready), *argv, "--out", str(tmp_path / "s")],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted; finished shards are kept" in err and "Traceback" not in err
    assert [p.parent.name for p in (tmp_path / "s" / "shards").rglob("*.safetensors")] == ["eng"]

    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    resumed, full = ActivationStore(tmp_path / "s"), ActivationStore(tmp_path / "full")
    for lang in full.languages:
        assert resumed.shard(lang, 0).read_bytes() == full.shard(lang, 0).read_bytes()


def test_the_command_keeps_freed_memory_so_large_tensors_do_not_fault_afresh():
    import resource

    from xlalign.cli import _keep_freed_memory

    _keep_freed_memory()
    faults = []
    for _ in range(8):  # a logits-sized tensor, allocated, written and freed again and again
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(64 * 2**20)  # 256 MB
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # Mapped afresh, every allocation costs 65,536 faults (one per 4 KB page); kept, the heap grows once or twice
    # (small allocations may take the top of a freed block) and then reuses what it holds.
    assert sum(faults) < 3 * 65_536 and max(faults[-3:]) < 2_000, faults
