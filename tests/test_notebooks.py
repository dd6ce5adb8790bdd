"""Every notebook runs top to bottom in a real Jupyter kernel (on a tiny random model, so the suite stays fast),
and what it shows equals the same quantity computed directly with the library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import kernel_values
import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
RUNNER = HERE.parent / "notebooks" / "run.py"
_spec = importlib.util.spec_from_file_location("notebook_runner", RUNNER)
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)


def values(path: Path, tmp_path: Path, expression: str):
    """Run ``path`` in a kernel, then evaluate ``expression`` (a dict) there and bring it back, with ``images``:
    how many figures the executed notebook shows as PNG."""
    out = tmp_path / "values.pt"
    dump = (
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport kernel_values\n"
        f"kernel_values.save({expression}, {str(out)!r})"
    )
    executed = runner.execute(path, extra=dump)
    shown = kernel_values.load(out)
    shown["images"] = sum(
        "image/png" in output.get("data", {}) for cell in executed.cells for output in cell.get("outputs", [])
    )
    return shown


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setenv("XLALIGN_MODEL", "random:llama")
    monkeypatch.setenv("XLALIGN_SENTENCES", "24")


def test_every_notebook_has_a_check():
    assert [path.name for path in runner.notebooks()] == [
        "01_where_languages_meet.py",
        "02_tokens.py",
        "03_language_neurons.py",
        "04_steering.py",
        "05_moe_routing.py",
        "06_from_transformerlens_and_nnsight.py",
    ]


def test_a_notebook_that_raises_fails(tmp_path):
    broken = tmp_path / "99_broken.py"
    broken.write_text("# %%\nraise RuntimeError('this cell fails')\n")
    with pytest.raises(Exception, match="this cell fails"):
        runner.execute(broken)


def weighted(tokens: torch.Tensor) -> torch.Tensor:
    """MEXA's pooling, transcribed: position weights 1..T over a sentence's tokens, normalised to sum 1."""
    weights = torch.arange(1, len(tokens) + 1, dtype=torch.float32)
    return (tokens * weights[:, None]).sum(0) / weights.sum()


def test_where_languages_meet_notebook(small, tmp_path):
    """Every measure per layer and language equals the value computed from per-token activations read by another
    route (trace, then MEXA's position weights by hand); the summary tables are those values regrouped; the
    figure draws them."""
    from probes.analysis import linear_cka, mexa, retrieval_top1, strong_alignment_map_by_language
    from probes.capture import trace
    from probes.data import load_corpus
    from probes.model import Site, load_model, n_layers

    shown = values(
        runner.FOLDER / "01_where_languages_meet.py",
        tmp_path,
        "{'table': table, 'per_layer': per_layer, 'best': best_layers, 'by_script': by_script, "
        "'lines': {l.get_label(): l.get_ydata() for l in figure.axes[0].get_lines()}}",
    )
    assert shown["images"] == 1, "every figure is drawn"
    table = shown["table"]
    model, tokenizer = load_model("random:llama")
    corpus = load_corpus("demo", max_sentences=24)
    sites = [Site(layer, "hidden") for layer in range(n_layers(model) + 1)]
    assert set(table.metric) == {"retrieval_top1", "mexa", "strong_map", "cka"} and len(corpus.languages) == 14
    assert table[["ci_low", "ci_high"]].notna().all().all() and (table.ci_low <= table.ci_high).all()
    records = {lang: trace(model, tokenizer, corpus.texts(lang), sites) for lang in corpus.languages}
    for site in (sites[1], sites[len(sites) // 2], sites[-1]):
        pooled = {lang: torch.stack([weighted(t) for t in rec.tokens(site)]) for lang, rec in records.items()}
        strong = strong_alignment_map_by_language(pooled)
        for lang in ("deu", "hin", "kor"):
            rows = table[(table.layer == site.layer) & (table.language == lang)].set_index("metric").value
            assert rows["mexa"] == pytest.approx(mexa(pooled["eng"], pooled[lang]), abs=1e-6)
            assert rows["retrieval_top1"] == pytest.approx(retrieval_top1(pooled["eng"], pooled[lang]), abs=1e-6)
            assert rows["cka"] == pytest.approx(float(linear_cka(pooled["eng"], pooled[lang])), abs=1e-5)
            assert rows["strong_map"] == pytest.approx(strong[lang], abs=1e-5)
    means = table.groupby(["layer", "metric"]).value.mean().unstack()
    np.testing.assert_allclose(shown["per_layer"][means.columns].to_numpy(), means.to_numpy())
    assert shown["best"]["most aligned layer"].to_dict() == means.idxmax().to_dict()
    mexa_means = table[table.metric == "mexa"].groupby("language").value.mean()
    latin = ["deu", "fra", "spa", "tur", "ind"]
    assert shown["by_script"][True] == pytest.approx(mexa_means[latin].mean())
    assert shown["by_script"][False] == pytest.approx(mexa_means.drop(latin).mean())
    deu = table[(table.metric == "retrieval_top1") & (table.language == "deu")].sort_values("layer")
    np.testing.assert_allclose(shown["lines"]["deu"], deu.value.to_numpy())


def test_tokens_notebook(small, tmp_path):
    """The best layer is the argmax of sentence retrieval; the heatmap and every word alignment equal SimAlign's
    Argmax rule (numpy transcription) on hidden states read by another route (``output_hidden_states``)."""
    from reference_simalign import simalign_argmax

    from probes.analysis import word_of_token
    from probes.data import load_corpus
    from probes.model import load_model, n_layers

    shown = values(
        runner.FOLDER / "02_tokens.py",
        tmp_path,
        "{'alignments': alignments, 'best': best_layer, 'heat': heat, 'scores': scores}",
    )
    assert shown["images"] == 1, "every figure is drawn"
    scores, alignments = shown["scores"], shown["alignments"]
    assert shown["best"] == scores.sort_values(["retrieval_top1", "mexa"], ascending=False).index[0]
    model, tokenizer = load_model("random:llama")
    corpus = load_corpus("demo", langs=["eng", "deu"], max_sentences=24)
    layers = n_layers(model)
    assert sorted(set(alignments.layer)) == list(range(layers + 1)) and len(alignments) == 4 * (layers + 1)
    for index, (english, german) in enumerate(zip(corpus.texts("eng")[:4], corpus.texts("deu")[:4])):
        states, words = [], []
        for text in (english, german):
            encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(input_ids=encoded["input_ids"], output_hidden_states=True).hidden_states
            states.append(hidden)
            words.append(word_of_token(encoded["offset_mapping"][0].tolist(), text))
        if index == 0:
            layer = shown["best"]
            x, y = states[0][layer][0].double(), states[1][layer][0].double()
            expected = (torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1) + 1) / 2
            torch.testing.assert_close(shown["heat"], expected, atol=1e-5, rtol=0)
        for layer in range(layers):  # hidden_states[L] is after the final norm; resid.L before it
            keep = [[i for i, w in enumerate(ws) if w >= 0] for ws in words]
            x, y = (states[k][layer][0][keep[k]].double().numpy() for k in (0, 1))
            pairs = simalign_argmax(x, y, [words[0][i] for i in keep[0]], [words[1][j] for j in keep[1]])
            row = alignments[(alignments.pair == index) & (alignments.layer == layer)].iloc[0]
            en, de = english.split(), german.split()
            assert row["alignments"] == " ".join(f"{en[i]}-{de[j]}" for i, j in pairs), (index, layer)
            assert row["aligned pairs"] == len(pairs)


def test_from_transformerlens_and_nnsight_notebook(small, tmp_path):
    """The tables made through a TransformerBridge and an nnsight model equal the hf backend's, computed here
    directly; the steered continuations through each equal hf steering done here."""
    import xlalign as xl

    shown = values(
        runner.FOLDER / "06_from_transformerlens_and_nnsight.py",
        tmp_path,
        "{'tables': tables, 'continuations': continuations, 'bridge': type(bridge).__name__, 'lm': type(lm).__name__}",
    )
    assert shown["bridge"] == "TransformerBridge" and shown["lm"] == "TransformersModel"
    model, tokenizer = xl.load_model("random:llama")
    corpus = xl.load_corpus("demo", langs=["eng", "deu", "jpn"], max_sentences=24)
    layers = xl.n_layers(model)
    sites = [xl.Site(layer, "resid") for layer in range(layers + 1)]
    expected = xl.measure(xl.capture_corpus(model, tokenizer, corpus, sites, pooling="mean"), pivot="eng")
    for name in ("hf", "tl", "nnsight"):
        np.testing.assert_allclose(shown["tables"][name].value.to_numpy(), expected.value.to_numpy(), atol=1e-6)
    middle = xl.Site(layers // 2, "resid")
    acts = xl.capture_corpus(model, tokenizer, corpus, [middle], pooling="mean")
    direction = acts.get(middle, "eng").mean(0) - acts.get(middle, "jpn").mean(0)
    prompts = tokenizer(corpus.texts("jpn")[:3], return_tensors="pt", padding=True, padding_side="left")
    with xl.steer(model, [xl.AddVector({layers // 2: direction})]), torch.no_grad():
        generated = model.generate(**prompts, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(generated[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True)
    assert shown["continuations"] == {"hf": texts, "tl": texts, "nnsight": texts}


def test_language_neurons_notebook(small, tmp_path):
    """LAPE neurons, AP counts and the ablation matrix equal what the library computes here directly."""
    import xlalign as xl

    shown = values(
        runner.FOLDER / "03_language_neurons.py",
        tmp_path,
        "{'lape': lape.tensors(), 'ap_counts': ap_counts, 'ablation': ablation, 'own': own_most}",
    )
    assert shown["images"] == 3, "every figure is drawn"
    model, tokenizer = xl.load_model("random:llama")
    languages = ["eng", "deu", "fra", "rus", "jpn", "hin"]
    corpus = xl.load_corpus("demo", langs=languages, max_sentences=24)
    layers = range(1, xl.n_layers(model) + 1)
    stats = xl.collect_stats(model, tokenizer, corpus, [xl.Site(layer, "mlp_gate") for layer in layers], bins=0)
    lape = xl.LAPE().fit(stats).neurons_
    assert shown["lape"].keys() == lape.tensors().keys()
    assert all(torch.equal(shown["lape"][k], v) for k, v in lape.tensors().items())
    acts = xl.capture_corpus(model, tokenizer, corpus, [xl.Site(layer, "mlp_act") for layer in layers])
    ap = xl.APExperts(k=200).fit(acts, ["mlp_act"]).neuron_sets_["mlp_act"]
    pd_testing_equal(shown["ap_counts"], ap.count_per_layer())
    assert list(shown["ablation"].index) == list(lape.languages)
    zeroed = lape.languages[0]
    texts = corpus.texts("hin")[:32]
    before = xl.next_token_loss(model, tokenizer, texts)
    with xl.steer(model, [xl.to_intervention(lape, language=zeroed)]):
        after = xl.next_token_loss(model, tokenizer, texts)
    assert shown["ablation"].loc[zeroed, "hin"] == pytest.approx(after / before - 1, abs=1e-9)
    assert shown["own"] == {lang: shown["ablation"].loc[lang].idxmax() == lang for lang in lape.languages}


def pd_testing_equal(left, right) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True))


def test_steering_notebook(small, tmp_path):
    """The closed-loop table equals the evaluation run here directly; the slider's continuations equal the shift
    vector added by hand."""
    import pandas as pd

    import xlalign as xl

    shown = values(
        runner.FOLDER / "04_steering.py",
        tmp_path,
        "{'evaluation': evaluation, 'side': side_by_side, 'best': loop.best}",
    )
    assert shown["images"] == 2, "every figure is drawn"
    model, tokenizer = xl.load_model("random:llama")
    corpus = xl.load_corpus("demo", langs=["eng", "deu", "jpn", "hin"], max_sentences=24)
    xl.evaluate(
        tmp_path / "direct",
        model=model,
        tokenizer=tokenizer,
        corpus=corpus,
        methods=["shift", "claim", "procrustes"],
        n_loss=16,
        n_prompts=4,
        progress=False,
    )
    direct = pd.read_csv(tmp_path / "direct" / "evaluation.csv")
    pd.testing.assert_frame_equal(shown["evaluation"], direct, check_exact=False, rtol=1e-12)
    assert set(shown["best"].method) == {"shift", "claim", "procrustes"}
    train, test = corpus.split(test_fraction=0.2)
    middle = xl.n_layers(model) // 2
    acts = xl.capture_corpus(model, tokenizer, train, [xl.Site(middle, "resid")])
    vector = acts.get(xl.Site(middle, "resid"), "eng").mean(0) - acts.get(xl.Site(middle, "resid"), "jpn").mean(0)
    prompts = test.texts("jpn")[:3]
    with xl.steer(model, [xl.AddVector({middle: vector})]):
        steered = xl.continuations(model, tokenizer, prompts)
    assert shown["side"]["alpha=1.0"].tolist() == steered
    assert shown["side"]["plain"].tolist() == xl.continuations(model, tokenizer, prompts)


def per_text_mean(per_token: torch.Tensor, text: torch.Tensor, n_texts: int) -> torch.Tensor:
    return torch.stack([per_token[text == i].mean(0) for i in range(n_texts)])


def actual_weight(ids: torch.Tensor, weights: torch.Tensor, experts: int) -> torch.Tensor:
    """Bandarkar et al.'s actual weight per token, by hand: the top-k weights renormalised, on their experts."""
    return torch.zeros(len(ids), experts).scatter_(1, ids, weights / weights.sum(1, keepdim=True))


def test_moe_routing_notebook(small, tmp_path, monkeypatch):
    """With XLALIGN_MODEL dense, the notebook studies the tiny MoE saved here; its divergence table equals
    routing_divergence of the importance computed from the model's own router logits (one sentence at a time);
    the steering table equals RouterBias on English's top-2 experts applied here, and each family's table the
    routing traced and weighted by hand."""
    import pandas as pd

    from probes.analysis import expert_set_overlap, routing_divergence
    from probes.capture import trace_router
    from probes.model import MOE_FAMILIES, random_model, router_layers
    from steer.apply import steer
    from steer.evaluate import next_token_loss
    from steer.router import RouterBias
    from scripts.tiny_moe import SIZES, TinyMoE, demo_splits, train_tiny_moe

    saved = train_tiny_moe(steps=3).save(tmp_path / "tiny_moe")
    monkeypatch.setenv("XLALIGN_TINY_MOE", str(saved))
    monkeypatch.setenv("XLALIGN_SENTENCES", "8")
    shown = values(
        runner.FOLDER / "05_moe_routing.py",
        tmp_path,
        "{'routing': routing, 'divergence': divergence, 'steering': steering, 'middle': middle, "
        "'families': family_tables, 'source': source}",
    )
    assert shown["images"] == 4, "every figure is drawn"
    assert shown["source"].startswith(f"the tiny MoE (loaded from {saved}), 3 training steps")
    tiny = TinyMoE.load(saved)
    model, tokenizer, k = tiny.model, tiny.tokenizer, SIZES["num_experts_per_tok"]
    train, test = demo_splits()
    fit, held_out = train.subset(n=8), test.subset(n=8)
    importance = {}
    for lang in held_out.languages:
        for text in held_out.texts(lang):
            with torch.no_grad():
                logits = model(**tokenizer(text, return_tensors="pt"), output_router_logits=True).router_logits
            for layer, gate in enumerate(logits, start=1):
                top = gate.softmax(-1).topk(k)
                row = actual_weight(top.indices, top.values, gate.shape[1]).mean(0)
                importance.setdefault(layer, {}).setdefault(lang, []).append(row)
    importance = {
        layer: {lang: torch.stack(rows) for lang, rows in by_lang.items()} for layer, by_lang in importance.items()
    }
    expected = pd.concat([routing_divergence(importance), expert_set_overlap(importance, k=2)], ignore_index=True)
    pd_testing_equal(shown["routing"][["layer", "language", "metric"]], expected[["layer", "language", "metric"]])
    np.testing.assert_allclose(shown["routing"].value, expected.value, atol=1e-6)
    jsd = expected[expected.metric == "jsd"].pivot(index="layer", columns="language", values="value")
    np.testing.assert_allclose(shown["divergence"].to_numpy(), jsd.to_numpy(), atol=1e-6)

    def traced(model, tokenizer, plan=()):
        rows = {}
        for lang in held_out.languages:
            with steer(model, list(plan) if lang != "eng" else []):
                trace = trace_router(model, tokenizer, held_out.texts(lang))
            for layer in trace.layers:
                weight = actual_weight(trace.ids[layer], trace.weights[layer], trace.logits[layer].shape[1])
                rows.setdefault(layer, {})[lang] = per_text_mean(weight, trace.text, trace.n_texts)
        return rows

    english = trace_router(model, tokenizer, fit.texts("eng"))
    assert shown["middle"] == [3, 4]
    selected = {
        layer: torch.zeros(len(english.ids[layer]), 8).scatter_(1, english.ids[layer], 1.0) for layer in shown["middle"]
    }
    usage = {layer: per_text_mean(chosen, english.text, english.n_texts).mean(0) for layer, chosen in selected.items()}
    top = {layer: used.topk(2).indices for layer, used in usage.items()}
    steering = shown["steering"]
    assert sorted(steering.index) == sorted(set(held_out.languages) - {"eng"})
    for delta in (0.5, 1.0, 2.0):
        plan = [RouterBias(top, delta)]
        table = routing_divergence(traced(model, tokenizer, plan))
        middle = table[(table.metric == "jsd") & table.layer.isin([3, 4])].groupby("language").value.mean()
        np.testing.assert_allclose(steering[("middle jsd", f"delta={delta:g}")], middle[steering.index], atol=1e-6)
        for lang in ("deu", "jpn"):
            with steer(model, plan):
                loss = next_token_loss(model, tokenizer, held_out.texts(lang))
            assert steering.loc[lang, ("loss", f"delta={delta:g}")] == pytest.approx(loss, abs=1e-6)
    plain = jsd.loc[[3, 4]].mean()
    np.testing.assert_allclose(steering[("middle jsd", "none")], plain[steering.index], atol=1e-6)
    plain_loss = next_token_loss(model, tokenizer, held_out.texts("hin"))
    assert steering.loc["hin", ("loss", "none")] == pytest.approx(plain_loss, abs=1e-6)

    assert list(shown["families"]) == list(MOE_FAMILIES)
    for family, table in shown["families"].items():
        family_model, family_tokenizer = random_model(family)
        weights = traced(family_model, family_tokenizer)
        assert sorted(weights) == router_layers(family_model) == sorted(table.layer.unique())
        expected = pd.concat([routing_divergence(weights), expert_set_overlap(weights, k=2)], ignore_index=True)
        pd_testing_equal(table.drop(columns="value"), expected.drop(columns="value"))
        np.testing.assert_allclose(table.value, expected.value, atol=1e-6, err_msg=family)
