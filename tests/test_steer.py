"""Interventions and schedules: equal to manual edits, padding-proof, cache-proof, gated, and leak-free."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from conftest import TEXTS, tiny
from probes.capture import batches
from probes.sites import Site, hook, tap
from steer.apply import steer
from steer.evaluate import next_token_loss
from steer.interventions import AddVector, HeadShift, LinearMap, SetNeurons, ZeroNeurons
from steer.schedule import Schedule, ScheduleError

generator = torch.Generator().manual_seed(0)
WIDTH, NEURONS, HEAD_DIM = 64, 128, 16
INTERVENTIONS = {
    "add": AddVector({2: torch.randn(WIDTH, generator=generator)}, alpha=4.0),
    "set": SetNeurons({1: torch.tensor([3, 7, 50])}, {1: torch.tensor([2.0, -1.0, 3.0])}),
    "zero": ZeroNeurons({2: torch.arange(0, 128, 2), 3: torch.tensor([1, 2, 3])}),
    "map": LinearMap({3: torch.randn(WIDTH, WIDTH, generator=generator) / 8}, sigma=0.7, mode="code"),
    "interpolate": LinearMap({1: torch.randn(WIDTH, WIDTH, generator=generator) / 8}, sigma=0.5, mode="interpolate"),
    "heads": HeadShift({2: torch.tensor([0, 3])}, {2: torch.randn(2, HEAD_DIM, generator=generator)}, alpha=3.0),
}
SCHEDULES = {
    "all": Schedule(),
    "last": Schedule(prefill="last", decode="none"),
    "span": Schedule(prefill=(1, 3), decode=2),
    "decode_only": Schedule(prefill="none", decode="all"),
}


def prompt_batch(tokenizer, texts, side="left"):
    (batch,) = batches(tokenizer, texts, batch_size=len(texts), padding_side=side)
    order = batch.rows.argsort()
    return batch.input_ids[order], batch.attention_mask[order]


def manual_reference(model, name, intervention):
    """The same edit written by hand as a raw hook on the module (not through steer's machinery)."""
    (layer,) = intervention.layers[:1]
    module, side = tap(model, Site(layer, intervention.component))

    def edit(x):
        if name == "add":
            return x + 4.0 * intervention.vectors[layer]
        if name in ("set", "zero"):
            x = x.clone()
            x[..., intervention.units[layer]] = intervention.values[layer] if name == "set" else 0.0
            return x
        if name == "map":
            return x + 0.7 * x @ intervention.maps[layer]
        if name == "interpolate":
            return 0.5 * x + 0.5 * x @ intervention.maps[layer]
        heads = x.view(*x.shape[:2], 4, HEAD_DIM).clone()
        heads[..., [0, 3], :] += 3.0 * intervention.vectors[layer]
        return heads.view(x.shape)

    handles = [hook(module, side, edit)]
    if name == "zero":  # ZeroNeurons here spans two layers
        module3, side3 = tap(model, Site(3, "mlp_gate"))
        handles.append(hook(module3, side3, lambda x: x.index_fill(-1, torch.tensor([1, 2, 3]), 0.0)))
    return handles


@pytest.mark.parametrize("name", INTERVENTIONS)
def test_edit_equals_manual_reference_and_leaves_model_unchanged(name):
    model, tokenizer = tiny("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = prompt_batch(tokenizer, TEXTS[:4], side="right")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, [INTERVENTIONS[name]]):
            steered = model(input_ids=ids, attention_mask=mask).logits
        handles = manual_reference(model, name, INTERVENTIONS[name])
        try:
            expected = model(input_ids=ids, attention_mask=mask).logits
        finally:
            for handle in handles:
                handle.remove()
        after = model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (steered - plain)[valid].abs().max() > 1e-3, "the intervention must change something"
    torch.testing.assert_close(steered[valid], expected[valid])
    torch.testing.assert_close(after, plain)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_zero_neurons_equals_zeroing_gate_weights():
    model, tokenizer = tiny("gemma3_text")
    units = torch.tensor([5, 9, 77])
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.layers[1].mlp.gate_proj.weight[units] = 0.0  # GELU(0) = 0: the same neurons silenced
        ids, mask = prompt_batch(tokenizer, TEXTS[:3], side="right")
        with steer(model, [ZeroNeurons({2: units})]):
            steered = model(input_ids=ids, attention_mask=mask).logits
        expected = edited(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(steered[mask.bool()], expected[mask.bool()])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", list(INTERVENTIONS))
def test_batched_left_padded_generation_equals_one_by_one_and_cache_is_irrelevant(name, schedule):
    model, tokenizer = tiny("qwen2")
    texts = TEXTS[:3]
    plan = [(INTERVENTIONS[name], SCHEDULES[schedule])]
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ids, mask = prompt_batch(tokenizer, texts, side="left")
    with steer(model, plan):
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **options)
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **options)
        singles = []
        for text in texts:
            one_ids, one_mask = prompt_batch(tokenizer, [text])
            singles.append(model.generate(input_ids=one_ids, attention_mask=one_mask, **options)[0, one_ids.shape[1]:])
    assert torch.equal(cached, uncached)
    for row, single in enumerate(singles):
        assert torch.equal(cached[row, ids.shape[1]:], single)


@dataclass(frozen=True)
class SpySchedule(Schedule):
    """A schedule that records the decode steps and prompt positions it selected."""

    seen: list = field(default_factory=list, compare=False)

    def select(self, ctx):
        chosen = super().select(ctx)
        self.seen.append((ctx.decode_step[chosen].tolist(), ctx.position[chosen & (ctx.decode_step == 0)].tolist()))
        return chosen


@pytest.mark.parametrize("use_cache", [True, False])
def test_decode_schedule_touches_exactly_the_named_steps(use_cache):
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:1])
    options = dict(max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id)
    spy = SpySchedule(prefill="last", decode=2)
    with steer(model, [(AddVector({1: torch.zeros(WIDTH)}), spy)]):
        model.generate(input_ids=ids, attention_mask=mask, **options)
    steps = {s for decode, _ in spy.seen for s in decode if s > 0}
    prompt_positions = {p for _, positions in spy.seen for p in positions}
    assert steps == {1, 2}
    assert prompt_positions == {int(mask.sum()) - 1}


def test_first_generated_token_depends_only_on_the_prefill_schedule():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    strong = AddVector({2: 50 * torch.randn(WIDTH, generator=torch.Generator().manual_seed(3))})
    first = ids.shape[1]
    plain = model.generate(input_ids=ids, attention_mask=mask, **options)
    with steer(model, [(strong, Schedule(prefill="none", decode="all"))]):
        decode_only = model.generate(input_ids=ids, attention_mask=mask, **options)
    with steer(model, [(strong, Schedule(prefill="last", decode="none"))]):
        prefill_only = model.generate(input_ids=ids, attention_mask=mask, **options)
    assert torch.equal(decode_only[:, first], plain[:, first])
    assert not torch.equal(decode_only[:, first + 1 :], plain[:, first + 1 :])
    assert not torch.equal(prefill_only[:, first], plain[:, first])


def test_language_gating_touches_only_gated_examples():
    model, tokenizer = tiny("gpt2")
    ids, mask = prompt_batch(tokenizer, TEXTS[:4])
    gate = Schedule(languages=("deu", "rus"))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, [(INTERVENTIONS["add"], gate)], languages=["eng", "deu", "jpn", "rus"]):
            steered = model(input_ids=ids, attention_mask=mask).logits
    changed = [(steered[row] - plain[row])[mask[row].bool()].abs().max().item() > 1e-3 for row in range(4)]
    assert changed == [False, True, False, True]
    with pytest.raises(ScheduleError, match="needs the language of each of the 4 examples"):
        with steer(model, [(INTERVENTIONS["add"], gate)]):
            model(input_ids=ids, attention_mask=mask)


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_remain_after_an_exception():
    model, tokenizer = tiny("llama")
    before = hook_count(model)
    plan = list(INTERVENTIONS.values())
    with pytest.raises(RuntimeError, match="inside"):
        with steer(model, plan):
            assert hook_count(model) > before
            raise RuntimeError("inside")
    assert hook_count(model) == before
    with pytest.raises(Exception):  # a bad plan fails while registering: nothing stays behind
        with steer(model, [INTERVENTIONS["add"], AddVector({9: torch.zeros(WIDTH)})]):
            pass
    assert hook_count(model) == before


def test_next_token_loss_matches_a_direct_computation_and_ignores_padding():
    model, tokenizer = tiny("llama")
    loss = next_token_loss(model, tokenizer, TEXTS, batch_size=3)
    total, count = 0.0, 0
    for text in TEXTS:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        total += out.loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_interventions_take_fitted_artifacts_directly():
    from probes.directions import LinearMap as FittedMap
    from probes.directions import ShiftVector, fit_procrustes

    model, _ = tiny("llama")
    gen = torch.Generator().manual_seed(5)
    source, target = torch.randn(40, WIDTH, generator=gen), torch.randn(40, WIDTH, generator=gen)
    W, mean_source, mean_pivot = fit_procrustes(source, target)
    identity = {"model": {}, "params": {"center": True, "normalize": True}}
    fitted = FittedMap({2: W}, "resid", "procrustes", "deu", "eng", identity["params"], identity["model"],
                       {2: mean_source}, {2: mean_pivot})
    x = torch.randn(2, 5, WIDTH, generator=gen)
    for mode, expected in (("code", x + 0.3 * fitted.transform(2, x)),
                           ("interpolate", 0.7 * x + 0.3 * fitted.transform(2, x))):
        torch.testing.assert_close(LinearMap.from_map(fitted, sigma=0.3, mode=mode).edit(2, x), expected)

    vectors = torch.zeros(4, HEAD_DIM)
    vectors[1] = 1.0
    heads = HeadShift.from_shift(ShiftVector({3: vectors}, "head", "eng", "deu", "claim", {}, {}), alpha=2.0)
    assert heads.layers == (3,) and heads.heads[3].tolist() == [1]
    shift = ShiftVector({1: torch.ones(WIDTH)}, "resid", "eng", "deu", "mean", {}, {})
    assert torch.equal(AddVector.from_shift(shift, 0.5).edit(1, torch.zeros(WIDTH)), torch.full((WIDTH,), 0.5))


@pytest.mark.parametrize("schedule", ["last", "span", "mask"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_prefill_schedules_equal_a_manual_positional_edit(schedule, side):
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:4], side=side)
    position = mask.cumsum(dim=1) - 1  # index among non-pad tokens
    last = position == mask.sum(dim=1, keepdim=True) - 1
    token_mask = torch.zeros_like(mask, dtype=torch.bool)
    token_mask[:, ::3] = True
    chosen = {"last": last, "span": (position >= 1) & (position < 3), "mask": token_mask}[schedule] & mask.bool()
    prefill = {"last": "last", "span": (1, 3), "mask": token_mask}[schedule]
    vector = INTERVENTIONS["add"].vectors[2]
    module, where = tap(model, Site(2, "resid"))
    with torch.no_grad():
        with steer(model, [(INTERVENTIONS["add"], Schedule(prefill=prefill, decode="none"))]):
            steered = model(input_ids=ids, attention_mask=mask).logits
        handle = hook(module, where, lambda x: x + 4.0 * vector * chosen[..., None])
        try:
            expected = model(input_ids=ids, attention_mask=mask).logits
        finally:
            handle.remove()
    torch.testing.assert_close(steered[mask.bool()], expected[mask.bool()])
