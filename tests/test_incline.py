"""INCLINE's application against a transcription of its released code (intervention_llama.py: get_out on the
clean prompt, mlp_val + sigma * dire at every layer's last prompt token, patched by nethook only while the
forward pass is the prompt's), with raw torch hooks on the model's MLP modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TEXTS, tiny
from incline_reference import NEW_TOKENS, random_map, reference_generation
from probes.analysis import PAIR_METRICS
from probes.capture import Tokenization, batches, capture, record
from probes.data import demo_corpus
from probes.find import code_switched_pairs
from probes.model import Site, n_layers
from steer.apply import steer
from steer.evaluate import evaluate, next_token_loss
from steer.choices import SIGMAS
from steer.incline import incline
from steer.interventions import ApplyMap
from steer.methods import Findings, fit_methods, settings

PROMPTS = TEXTS[:3]


@pytest.mark.parametrize("sign,mode", [(1.0, "code"), (-1.0, "code"), (1.0, "interpolate")])
def test_incline_edits_every_layer_from_the_clean_pass_and_generates_as_the_released_code(sign, mode):
    model, tokenizer = tiny("llama")
    fitted, sigma = random_map(model), 0.5
    plan = [incline(model, tokenizer, PROMPTS, fitted, sigma, sign=sign, mode=mode)]
    (batch,) = batches(tokenizer, PROMPTS, Tokenization(batch_size=3), padding_side="left")
    order = batch.rows.argsort()
    ids, mask = batch.input_ids[order], batch.attention_mask[order]
    sites = [Site(layer, "mlp_out") for layer in fitted.matrices]
    with torch.no_grad(), steer(model, plan), record(model, sites) as seen:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    for row, prompt in enumerate(PROMPTS):
        expected, targets = reference_generation(model, tokenizer, prompt, fitted, sigma, sign, mode=mode)
        assert torch.equal(out[row, ids.shape[1] :], expected), f"row {row}"
        for site in sites:  # the steered prompt's last token holds c_l + sign * sigma * c_l W_l of the clean pass
            last = int(mask[row].sum()) - 1
            torch.testing.assert_close(seen.tokens(site)[row][last], targets[site.layer - 1], atol=1e-5, rtol=1e-5)


def test_incline_does_not_compound_like_a_map_at_every_layer():
    """An ApplyMap at every layer maps the already-steered value, so its last-token norm outgrows INCLINE's."""
    model, tokenizer = tiny("llama")
    fitted, sigma = random_map(model), 0.9
    last = Site(n_layers(model), "mlp_out")
    norms = {}
    plans = {
        "incline": [incline(model, tokenizer, PROMPTS[:1], fitted, sigma)],
        "every layer": [
            (
                ApplyMap(fitted.matrices, sigma, "code", "mlp_out"),
                incline(model, tokenizer, PROMPTS[:1], fitted, sigma)[1],
            )
        ],
    }
    for name, plan in plans.items():
        with torch.no_grad(), steer(model, plan), record(model, [last]) as seen:
            model(**tokenizer(PROMPTS[:1], return_tensors="pt"))
        norms[name] = float(seen.tokens(last)[0][-1].norm())
    assert norms["every layer"] != pytest.approx(norms["incline"], rel=1e-3)
    assert SIGMAS[0] == -1.0 and SIGMAS[-1] == 1.0 and len(SIGMAS) == 21 and -0.3 in SIGMAS and -0.2 in SIGMAS


def test_incline_pairs_and_fit_equal_the_released_training_loop():
    """intervention_llama.py: pair ``ind`` is plain when even, else English + newline + language -> English +
    newline + English; per layer the token mean of the ``mlp`` module's output; ``np.linalg.lstsq`` per layer."""
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 10)
    english, german = corpus.texts("eng"), corpus.texts("deu")
    source, target = code_switched_pairs(german, english, "llama")
    for ind in range(len(english)):
        assert source[ind] == (german[ind] if ind % 2 == 0 else english[ind] + "\n" + german[ind])
        assert target[ind] == (english[ind] if ind % 2 == 0 else english[ind] + "\n" + english[ind])
    bloom_source, bloom_target = code_switched_pairs(german, english, "bloom")  # intervention.py
    assert bloom_source[1] == german[1] + " " + english[1] and bloom_target[1] == english[1] + " " + english[1]
    assert code_switched_pairs(german, english, "none") == (german, english)

    def token_means(texts):
        rows = []
        for text in texts:
            outputs = {}
            hooks = [
                layer.mlp.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0].mean(0)))
                for i, layer in enumerate(model.model.layers)
            ]
            with torch.no_grad():
                model(**tokenizer(text, return_tensors="pt"))
            for hook in hooks:
                hook.remove()
            rows.append(torch.stack([outputs[i] for i in sorted(outputs)]))
        return torch.stack(rows).double().numpy()  # (pairs, layers, d)

    zh, en = token_means(source), token_means(target)
    found = fit_methods(model, tokenizer, corpus, languages=["deu"], methods=["incline"])
    assert found["incline"]["deu"].component == "mlp_out"
    for layer in range(n_layers(model)):
        expected = np.linalg.lstsq(zh[:, layer, :], en[:, layer, :], rcond=None)[0]
        np.testing.assert_allclose(found["incline"]["deu"].matrices[layer + 1].double().numpy(), expected, atol=2e-4)


def test_the_closed_loop_applies_incline_from_a_clean_pass_of_the_texts_it_measures():
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 12)
    fitted = random_map(model)
    grid = settings(
        Findings(n_layers(model), {"incline": {"deu": fitted}}),
        model,
        tokenizer,
        incline_settings=[("code", 0.5), ("interpolate", 0.5)],
    )
    table = evaluate(
        model, tokenizer, corpus, grid, languages=["deu"], metrics=["matched_random_gap"], n_boot=10, n_loss=6
    )
    site = Site(4, "hidden")  # the last layer: after the final norm, as MEXA reads it
    english = capture(model, tokenizer, corpus.texts("eng"), [site], pooling="weighted")[site]
    german = corpus.texts("deu")
    for mode in ("code", "interpolate"):
        rows = table[table.setting.str.contains(f"mode={mode}")]
        with steer(model, [incline(model, tokenizer, german, fitted, 0.5, mode=mode)]):
            steered = capture(model, tokenizer, german, [site], pooling="weighted")[site]
            loss = next_token_loss(model, tokenizer, german[:6])
        row = rows[(rows.metric == "matched_random_gap") & (rows.layer == 4)]
        assert row.on.item() == pytest.approx(PAIR_METRICS["matched_random_gap"](english, steered).mean().item())
        assert row.on.item() != pytest.approx(row.off.item(), abs=1e-6)
        assert rows[rows.metric == "loss_target"].on.item() == pytest.approx(loss)
