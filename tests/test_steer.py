"""Interventions and schedules: equal to manual edits written as raw torch hooks, padding-proof, cache-proof,
gated, checked at registration, and leak-free."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from conftest import TEXTS, hook_count, prompt_batch, tiny
from probes.capture import Tokenization
from probes.model import Site, locate
from steer.apply import steer
from steer.evaluate import next_token_loss
from steer.interventions import Ablate, AddVector, ApplyMap, HeadShift, InterventionError, SetNeurons, ZeroNeurons
from steer.schedule import Schedule, ScheduleError

generator = torch.Generator().manual_seed(0)
WIDTH, NEURONS, HEAD_DIM = 64, 128, 16
INTERVENTION_DIRECTIONS = torch.randn(2, WIDTH, generator=generator)
INTERVENTIONS = {
    "add": AddVector({2: torch.randn(WIDTH, generator=generator)}, alpha=4.0),
    "set": SetNeurons({1: torch.tensor([3, 7, 50])}, {1: torch.tensor([2.0, -1.0, 3.0])}),
    "zero": ZeroNeurons({2: torch.arange(0, 128, 2), 3: torch.tensor([1, 2, 3])}),
    "map": ApplyMap({3: torch.randn(WIDTH, WIDTH, generator=generator) / 8}, sigma=0.7, rule="code"),
    "interpolate": ApplyMap({1: torch.randn(WIDTH, WIDTH, generator=generator) / 8}, sigma=0.5, rule="interpolate"),
    "heads": HeadShift({2: torch.tensor([0, 3])}, {2: torch.randn(2, HEAD_DIM, generator=generator)}, alpha=3.0),
    "ablate": Ablate({2: INTERVENTION_DIRECTIONS}),
}
SCHEDULES = {
    "all": Schedule(),
    "last": Schedule(prefill="last", decode="none"),
    "span": Schedule(prefill=(1, 3), decode=2),
    "last_two": Schedule(prefill=(-2, None), decode=(2, None)),
    "decode_only": Schedule(prefill="none", decode="all"),
}


def raw_hook(model, site: Site, fn):
    """A plain torch hook replacing ``site``'s tensor with ``fn(tensor)`` (independent of xlalign's hooks)."""
    module, side = locate(model, site)
    if side == "output":
        return module.register_forward_hook(lambda _m, _a, out: fn(out[0] if isinstance(out, tuple) else out))
    return module.register_forward_pre_hook(lambda _m, args: (fn(args[0]), *args[1:]))


def manual_reference(model, name, intervention):
    """The same edit written by hand as a raw hook on the module (not through steer's machinery)."""
    (layer,) = intervention.layers[:1]

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
        if name == "ablate":  # project out the span of the two directions
            q = torch.linalg.qr(INTERVENTION_DIRECTIONS.T.double()).Q.float()
            return x - (x @ q) @ q.T
        heads = x.view(*x.shape[:2], 4, HEAD_DIM).clone()
        heads[..., [0, 3], :] += 3.0 * intervention.vectors[layer]
        return heads.view(x.shape)

    handles = [raw_hook(model, Site(layer, intervention.component), edit)]
    if name == "zero":  # ZeroNeurons here spans two layers
        handles.append(raw_hook(model, Site(3, "mlp_gate"), lambda x: x.index_fill(-1, torch.tensor([1, 2, 3]), 0.0)))
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
            singles.append(model.generate(input_ids=one_ids, attention_mask=one_mask, **options)[0, one_ids.shape[1] :])
    assert torch.equal(cached, uncached)
    for row, single in enumerate(singles):
        assert torch.equal(cached[row, ids.shape[1] :], single)


@dataclass(frozen=True)
class SpySchedule(Schedule):
    """A schedule that records the decode steps and prompt positions it selected."""

    seen: list = field(default_factory=list, compare=False)

    def select(self, ctx, languages=None):
        chosen = super().select(ctx, languages)
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
    gate = Schedule(only=("deu", "rus"))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, [(INTERVENTIONS["add"], gate)], languages=["eng", "deu", "jpn", "rus"]):
            steered = model(input_ids=ids, attention_mask=mask).logits
    changed = [(steered[row] - plain[row])[mask[row].bool()].abs().max().item() > 1e-3 for row in range(4)]
    assert changed == [False, True, False, True]
    with pytest.raises(ScheduleError, match="needs the language of each example \\(this batch has 4\\)"):
        with steer(model, [(INTERVENTIONS["add"], gate)]):
            model(input_ids=ids, attention_mask=mask)


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
    assert hook_count(model) == before and "generate" not in vars(model)


@pytest.mark.parametrize(
    "intervention, message",
    [
        (AddVector({2: torch.zeros(32)}), r"resid.2: the vector has shape \(32,\), but the site's tensor is \(64,\)"),
        (
            SetNeurons({1: torch.tensor([3, 128])}, {1: torch.zeros(2)}),
            "mlp_act.1: neuron indices 3..128 out of range; the site has 128",
        ),
        (ZeroNeurons({2: torch.tensor([-1])}), "mlp_gate.2: neuron indices -1..-1 out of range"),
        (ApplyMap({3: torch.eye(8)}), r"resid.3: W has shape \(8, 8\), but the site's tensor is \(64, 64\)"),
        (
            HeadShift({2: torch.tensor([4])}, {2: torch.zeros(1, HEAD_DIM)}),
            "head.2: neuron indices 4..4 out of range; the site has 4",
        ),
        (AddVector({1: torch.zeros(4, HEAD_DIM)}, component="head"), None),
        (Ablate({1: torch.ones(WIDTH)}, component="head"), "head.1: Ablate edits one vector per token"),
        (AddVector({7: torch.zeros(WIDTH)}), "resid.7: the model has 4 blocks"),
    ],
)
def test_interventions_are_checked_at_registration(intervention, message):
    model, tokenizer = tiny("llama")
    before = hook_count(model)
    if message is None:  # a head-shaped vector on a head site fits
        with steer(model, [intervention]):
            pass
        return
    with pytest.raises(ValueError, match=message):
        with steer(model, [intervention]):
            pass
    assert hook_count(model) == before


def test_next_token_loss_matches_a_direct_computation_and_ignores_padding():
    model, tokenizer = tiny("llama")
    loss = next_token_loss(model, tokenizer, TEXTS, tokenization=Tokenization(batch_size=3))
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
    from probes.artifacts import LinearMap, NeuronSet, ShiftVector
    from probes.find import fit_procrustes
    from steer.convert import add_vector, apply_map, head_shift, set_neurons, to_intervention
    from steer.interventions import EditContext

    at = lambda layer: EditContext(Site(layer, "resid"), None, None)  # noqa: E731 (these edits read the layer only)
    gen = torch.Generator().manual_seed(5)
    source, target = torch.randn(40, WIDTH, generator=gen), torch.randn(40, WIDTH, generator=gen)
    W, mean_source, mean_pivot = fit_procrustes(source, target)
    fitted = LinearMap(
        {2: W},
        "resid",
        "procrustes",
        "deu",
        "eng",
        {"center": True, "normalize": True},
        {},
        {2: mean_source},
        {2: mean_pivot},
    )
    x = torch.randn(2, 5, WIDTH, generator=gen)
    for rule, expected in (
        ("code", x + 0.3 * fitted.transform(2, x)),
        ("interpolate", 0.7 * x + 0.3 * fitted.transform(2, x)),
    ):
        torch.testing.assert_close(apply_map(fitted, sigma=0.3, rule=rule).edit(x, at(2)), expected)

    vectors = torch.zeros(4, HEAD_DIM)
    vectors[1] = 1.0
    heads = head_shift(ShiftVector({3: vectors}, "head", "eng", "deu", "claim", {}, {}), alpha=2.0)
    assert heads.layers == (3,) and heads.heads[3].tolist() == [1]
    shift = ShiftVector(
        {1: torch.ones(WIDTH), 2: 2 * torch.ones(WIDTH)}, "resid", "eng", "deu", "mean", {}, {}, recommended_layers=(2,)
    )
    assert add_vector(shift).layers == (2,), "the recommended layer, not every layer"
    assert add_vector(shift, 0.5, [1]).layers == (1,)
    assert torch.equal(add_vector(shift, 0.5, [1]).edit(torch.zeros(WIDTH), at(1)), torch.full((WIDTH,), 0.5))
    with pytest.raises(InterventionError, match="has no layers \\[5\\]"):
        add_vector(shift, layers=[5])
    experts = NeuronSet(
        "mlp_act",
        {"eng": torch.tensor([[1, 4], [3, 2]])},
        {"eng": {"on_p50": torch.tensor([0.5, -1.0])}},
        {},
        "APExperts",
    )
    setting = set_neurons(experts, "eng")
    assert {layer: units.tolist() for layer, units in setting.units.items()} == {1: [4], 3: [2]}
    assert {layer: values.tolist() for layer, values in setting.values.items()} == {1: [0.5], 3: [-1.0]}
    lape = NeuronSet("mlp_gate", {"deu": torch.tensor([[2, 7]])}, method="LAPE")
    assert to_intervention(lape, language="deu").units[2].tolist() == [7]
    with pytest.raises(InterventionError, match="name a language"):
        to_intervention(lape)


@pytest.mark.parametrize("schedule", ["last", "span", "last_three", "middle_negative", "mask"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_prefill_schedules_equal_a_manual_positional_edit(schedule, side):
    model, tokenizer = tiny("llama")
    texts = [text for text in TEXTS if len(tokenizer(text)["input_ids"]) >= 3][:4]  # every prompt has 3 tokens
    ids, mask = prompt_batch(tokenizer, texts, side=side)
    position = mask.cumsum(dim=1) - 1  # index among non-pad tokens
    length = mask.sum(dim=1, keepdim=True)
    token_mask = torch.zeros_like(mask, dtype=torch.bool)
    token_mask[:, ::3] = True
    chosen = {
        "last": position == length - 1,
        "span": (position >= 1) & (position < 3),
        "last_three": position >= length - 3,  # exactly the last three non-pad prompt tokens
        "middle_negative": (position >= length - 3) & (position < length - 1),
        "mask": token_mask,
    }[schedule] & mask.bool()
    prefill = {
        "last": "last",
        "span": (1, 3),
        "last_three": (-3, None),
        "middle_negative": (-3, -1),
        "mask": token_mask,
    }[schedule]
    vector = INTERVENTIONS["add"].vectors[2]
    with torch.no_grad():
        with steer(model, [(INTERVENTIONS["add"], Schedule(prefill=prefill, decode="none"))]):
            steered = model(input_ids=ids, attention_mask=mask).logits
        handle = raw_hook(model, Site(2, "resid"), lambda x: x + 4.0 * vector * chosen[..., None])
        try:
            expected = model(input_ids=ids, attention_mask=mask).logits
        finally:
            handle.remove()
    torch.testing.assert_close(steered[mask.bool()], expected[mask.bool()])


def test_bad_spans_are_errors():
    for span in ((-3, 6), (2, -1), (5, 2), (-1, -3), (3, 3)):
        with pytest.raises(ScheduleError, match="mixes a negative|empty or reversed"):
            Schedule(prefill=span)
    with pytest.raises(ScheduleError, match="decode steps count from 1"):
        Schedule(decode=(0, 3))
    with pytest.raises(ScheduleError, match="an int >= 0"):
        Schedule(decode=-1)
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, ["A", TEXTS[1]], side="left")  # "A" has 2 tokens
    for span in ((0, 3), (-3, None)):
        with pytest.raises(ScheduleError, match="reaches past the prompt of example 0, which has 2 non-pad tokens"):
            with torch.no_grad(), steer(model, [(INTERVENTIONS["add"], Schedule(prefill=span))]):
                model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ScheduleError, match="token mask has shape \\(1, 2\\)"):
        with (
            torch.no_grad(),
            steer(model, [(INTERVENTIONS["add"], Schedule(prefill=torch.ones(1, 2, dtype=torch.bool)))]),
        ):
            model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("use_cache", [True, False])
def test_decode_ranges_touch_exactly_their_steps(use_cache):
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:2])
    options = dict(
        max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id
    )
    spy = SpySchedule(prefill="none", decode=(2, 5))
    with steer(model, [(AddVector({1: torch.zeros(WIDTH)}), spy)]):
        model.generate(input_ids=ids, attention_mask=mask, **options)
    assert {s for decode, _ in spy.seen for s in decode} == {2, 3, 4}
