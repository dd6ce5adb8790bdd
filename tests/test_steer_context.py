"""Steering and recording together: reads see edits in either nesting order, steering holds no state across
calls, edits see their context, Patch reproduces the clean run, Ablate removes a direction."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from conftest import TEXTS, prompt_batch, tiny
from probes.capture import Tokenization, record, trace
from probes.model import Site, SiteError
from steer.apply import steer
from steer.interventions import Ablate, AddVector, EditContext, InterventionError
from steer.patch import Patch
from steer.schedule import Schedule

WIDTH = 64
VECTOR = torch.randn(WIDTH, generator=torch.Generator().manual_seed(11))


def test_record_sees_the_edited_value_in_both_nesting_orders():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    site = Site(2, "resid")
    plan = [AddVector({2: VECTOR}, 3.0)]
    with torch.no_grad():
        with steer(model, plan), record(model, [site]) as inside:
            model(input_ids=ids, attention_mask=mask)
        with record(model, [site]) as outside, steer(model, plan):
            model(input_ids=ids, attention_mask=mask)
        with record(model, [site]) as plain:
            model(input_ids=ids, attention_mask=mask)
    for a, b, c in zip(inside.tokens(site), outside.tokens(site), plain.tokens(site)):
        assert torch.equal(a, b), "the nesting order does not change what record sees"
        torch.testing.assert_close(a, c + 3.0 * VECTOR)  # the edited value, at every token


def test_two_steers_on_one_site_compose_in_the_order_they_were_opened():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:2])
    site = Site(1, "resid")
    double = Ablate({1: VECTOR})  # after adding VECTOR, projecting it out leaves no VECTOR component
    with torch.no_grad(), steer(model, [AddVector({1: VECTOR}, 5.0)]), steer(model, [double]):
        with record(model, [site]) as rec:
            model(input_ids=ids, attention_mask=mask)
    unit = VECTOR / VECTOR.norm()
    for tokens in rec.tokens(site):
        assert (tokens @ unit).abs().max() < 1e-4


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_same_input_and_plan_give_the_same_logits_whatever_ran_before(use_cache):
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    decode_only = [(AddVector({2: VECTOR}, 4.0), Schedule(prefill="none", decode="all"))]
    with torch.no_grad():
        with steer(model, decode_only):
            fresh = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, decode_only):
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1])  # a prefix: ids now "extend" it by one
            after_prefix = model(input_ids=ids, attention_mask=mask).logits
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=2,
                do_sample=False,
                pad_token_id=0,
                use_cache=use_cache,
            )
            after_generate = model(input_ids=ids, attention_mask=mask).logits
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(fresh, after_prefix) and torch.equal(fresh, after_generate)
    torch.testing.assert_close(fresh, plain), "a plain forward pass is a prompt: decode-only edits do not touch it"


def test_a_manual_decode_loop_with_a_cache_is_steered_like_generate():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:2])
    plan = [(AddVector({2: VECTOR}, 4.0), Schedule(prefill="last", decode=1))]
    with torch.no_grad(), steer(model, plan):
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
        )
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        steps = [out.logits[:, -1]]
        token, cache, step_mask = steps[0].argmax(-1, keepdim=True), out.past_key_values, mask
        for _ in range(2):
            step_mask = torch.cat([step_mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=step_mask, past_key_values=cache, use_cache=True)
            steps.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    for manual, reference in zip(steps, generated.logits):
        torch.testing.assert_close(manual, reference, atol=1e-4, rtol=1e-4)


def test_continuing_a_cache_filled_outside_xlalign_is_an_error():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:1])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        with steer(model, [AddVector({2: VECTOR})]):
            with pytest.raises(ValueError, match="KV cache of .* tokens that was filled outside xlalign's hooks"):
                model(
                    input_ids=token,
                    attention_mask=torch.cat([mask, torch.ones_like(token)], 1),
                    past_key_values=out.past_key_values,
                )


@dataclass(frozen=True)
class ScaleByPosition:
    """A position-dependent edit: h <- h * (1 + position / 10)."""

    component: str = "resid"

    @property
    def layers(self) -> tuple[int, ...]:
        return (2,)

    def check(self, site, shape) -> None:
        pass

    def edit(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        assert ctx.layer == 2 and ctx.site == Site(2, "resid") and ctx.selected.shape == x.shape[:2]
        return x * (1 + ctx.position[..., None] / 10)


def test_edits_see_positions_with_left_and_right_padding():
    model, tokenizer = tiny("llama")
    site = Site(2, "resid")
    plain = trace(model, tokenizer, TEXTS[:4], [site])
    for side in ("left", "right"):
        with steer(model, [ScaleByPosition()]):
            scaled = trace(model, tokenizer, TEXTS[:4], [site], tokenization=Tokenization(padding_side=side))
        for before, after in zip(plain.tokens(site), scaled.tokens(site)):
            factor = 1 + torch.arange(len(before))[:, None] / 10
            torch.testing.assert_close(after, before * factor)


def test_patch_makes_the_corrupted_run_equal_the_clean_one_downstream():
    model, tokenizer = tiny("qwen2")
    clean = ["The cat sleeps on the bed.", "Die Katze schläft."]
    corrupted = ["The cat sleeps in the bed.", "Der Hund schläft."]
    lengths = [len(tokenizer(text)["input_ids"]) for text in clean]
    assert lengths == [len(tokenizer(text)["input_ids"]) for text in corrupted], "activation patching aligns tokens"
    sites = [Site(layer, "resid") for layer in (2, 3, 4)]
    reference = trace(model, tokenizer, clean, sites)
    before = trace(model, tokenizer, corrupted, sites)
    patch = Patch.from_recording(reference, "resid", [2])
    for side in ("left", "right"):
        with steer(model, [patch]):  # every position of layer 2: everything downstream is the clean run
            patched = trace(model, tokenizer, corrupted, sites, tokenization=Tokenization(padding_side=side))
        for site in sites:
            for ours, theirs in zip(patched.tokens(site), reference.tokens(site)):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    last_only = (Patch.from_recording(reference, "resid", [3]), Schedule(prefill=(-1, None)))
    with steer(model, [last_only]):
        patched = trace(model, tokenizer, corrupted, sites)
    for ours, theirs, unpatched in zip(patched.tokens(sites[1]), reference.tokens(sites[1]), before.tokens(sites[1])):
        torch.testing.assert_close(ours[-1], theirs[-1])  # the patched position holds the clean value
        torch.testing.assert_close(ours[:-1], unpatched[:-1])  # the others are the corrupted run's
    with pytest.raises(
        InterventionError, match="example 1 has a selected token at position 13, but the recording holds 13 tokens"
    ):
        with steer(model, [patch]):
            trace(model, tokenizer, [clean[0], clean[1] + " Und der Hund auch nicht."], sites)
    with pytest.raises(SiteError, match="was not recorded"):
        reference.tokens(Site(1, "resid"))


def test_ablate_removes_a_direction_and_mean_ablation_sets_it_to_the_mean():
    model, tokenizer = tiny("llama")
    site = Site(3, "resid")
    g = torch.Generator().manual_seed(4)
    directions = torch.randn(3, WIDTH, generator=g)
    mean = torch.randn(WIDTH, generator=g)
    plain = trace(model, tokenizer, TEXTS, [site])
    with steer(model, [Ablate({3: directions})]):
        zeroed = trace(model, tokenizer, TEXTS, [site])
    with steer(model, [Ablate({3: directions[:1]}, means={3: mean})]):
        at_mean = trace(model, tokenizer, TEXTS, [site])
    q = torch.linalg.qr(directions.T.double()).Q.float()  # (d, 3) orthonormal basis of the span
    unit = directions[0] / directions[0].norm()
    for before, a, b in zip(plain.tokens(site), zeroed.tokens(site), at_mean.tokens(site)):
        torch.testing.assert_close(a, before - (before @ q) @ q.T, atol=1e-5, rtol=1e-5)
        assert (a @ directions.T).abs().max() < 1e-4
        torch.testing.assert_close(b @ unit, (mean @ unit).expand(len(b)), atol=1e-5, rtol=1e-5)
    with pytest.raises(InterventionError, match="finite and non-zero"):
        Ablate({1: torch.zeros(WIDTH)})
