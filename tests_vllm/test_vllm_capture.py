"""Activations read through vLLM equal the hf backend's: per token and pooled, plain and under a plan."""

from __future__ import annotations

import pytest
import torch

from probes.capture import Tokenization, capture, trace
from probes.model import Site
from steer import steer
from steer.errors import EngineError
from steer.interventions import AddVector

TEXTS = ["Hello world, this is a test.", "Das ist ein Test.", "xyz", "La maison est grande et belle."]


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_per_token_and_pooled_captures_equal_hf(family, checkpoints, engines):
    _, model, tokenizer = checkpoints[family]
    engine = engines(family)
    sites = [Site(0, "resid"), Site(2, "resid"), Site(4, "hidden"), Site(3, "head"), Site(1, "attn_out")]
    sites += [Site(2, "mlp_out")]
    sites += [Site(2, "router")] if family == "mixtral" else [Site(2, "mlp_act")]
    recorded = engine.record(TEXTS, sites)
    expected = trace(model, tokenizer, TEXTS, sites)
    for site in sites:
        wanted = expected.tokens(site)  # router: (tokens, 3, experts), probabilities, weights, selected
        assert len(recorded[site]) == len(TEXTS)
        for got, want in zip(recorded[site], wanted):
            torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)
    for pooling in ("mean", "last", "weighted"):
        tokenization = Tokenization(exclude_bos=pooling == "mean")
        flat = [site for site in sites if site.component != "router"]
        got = engine.capture(TEXTS, flat, pooling=pooling, tokenization=tokenization)
        want = capture(model, tokenizer, TEXTS, flat, pooling=pooling, tokenization=tokenization)
        for site in flat:
            torch.testing.assert_close(got[site], want[site], atol=1e-4, rtol=1e-4)


def test_a_capture_under_a_plan_reads_the_steered_stream(checkpoints, engines):
    _, model, tokenizer = checkpoints["llama"]
    engine = engines("llama")
    plan = AddVector({1: torch.randn(128, generator=torch.Generator().manual_seed(7)) * 3})
    engine.install(plan, "shift1")
    sites = [Site(1, "resid"), Site(3, "resid")]
    got = engine.capture(TEXTS, sites, plans="shift1")
    with steer(model, plan):
        want = capture(model, tokenizer, TEXTS, sites)
    plain = capture(model, tokenizer, TEXTS, sites)
    for site in sites:
        torch.testing.assert_close(got[site], want[site], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(got[site], plain[site], atol=1e-2)


def test_a_site_the_engine_cannot_read_is_refused(engines):
    with pytest.raises(EngineError, match="q_proj"):
        engines("llama").record(TEXTS, [Site(2, "q_proj")])


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_the_next_token_loss_from_prompt_logprobs_equals_hf(family, checkpoints, engines):
    from steer.evaluate import next_token_loss

    _, model, tokenizer = checkpoints[family]
    engine = engines(family)
    plan = AddVector({2: torch.randn(128, generator=torch.Generator().manual_seed(10)) * 4})
    engine.install(plan, "loss_shift")
    plain = engine.loss(TEXTS)
    assert plain == pytest.approx(next_token_loss(model, tokenizer, TEXTS), abs=1e-5)
    steered = engine.loss(TEXTS, plans="loss_shift")
    with steer(model, plan):
        assert steered == pytest.approx(next_token_loss(model, tokenizer, TEXTS), abs=1e-5)
    # A random model predicts near-uniformly (loss about ln 1024), so a shift moves its loss by thousandths.
    assert abs(steered - plain) > 1e-4
