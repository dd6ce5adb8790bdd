"""The API a notebook reaches for: steer() takes one intervention, one artifact, one pair or a mixed list; its
handle is a context manager and a remove()-able handle, leak-free; Schedule(only=) replaces Schedule(languages=)."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import TEXTS, hook_count, prompt_batch, tiny
from probes.artifacts import Eraser, LanguageDetector, LinearMap, NeuronSet, ShiftVector
from steer.apply import SteerHandle, steer
from steer.convert import to_intervention
from steer.interventions import AddVector, ApplyMap, InterventionError, ZeroNeurons
from steer.schedule import Schedule, ScheduleError, gated

generator = torch.Generator().manual_seed(7)
WIDTH = 64


def rand(*shape):
    return torch.randn(*shape, generator=generator)


ADD = AddVector({2: rand(WIDTH)}, alpha=4.0)
MAP = ApplyMap({1: rand(WIDTH, WIDTH) / 8}, sigma=0.5, rule="interpolate")
LAST = Schedule(prefill="last", decode="none")
SHIFT = ShiftVector({1: rand(WIDTH), 2: 3 * rand(WIDTH), 3: rand(WIDTH)}, "resid", "eng", "deu", "mean", {}, {}, (2,))
ARTIFACTS = {
    "shift": SHIFT,
    "map": LinearMap(
        {1: rand(WIDTH, WIDTH) / 8, 3: rand(WIDTH, WIDTH) / 8},
        "resid",
        "incline",
        "deu",
        "eng",
        {},
        {},
        recommended_layers=(3,),
    ),
    "eraser": Eraser({2: rand(WIDTH, 2)}, {2: rand(2, WIDTH) / 4}, {2: rand(WIDTH)}, "resid", ("deu", "eng"), {}, {}),
    "lape": NeuronSet("mlp_gate", {"deu": torch.tensor([[1, 3], [1, 40], [2, 7]])}, method="LAPE"),
}


def logits(model, tokenizer, plan=None, **options):
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    with torch.no_grad():
        if plan is None:
            return model(input_ids=ids, attention_mask=mask).logits
        with steer(model, plan, **options):
            return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("single, plan", [(ADD, [ADD]), ((MAP, LAST), [(MAP, LAST)])], ids=["intervention", "pair"])
def test_one_intervention_or_pair_equals_a_one_item_plan(single, plan):
    model, tokenizer = tiny("llama")
    expected = logits(model, tokenizer, plan)
    assert not torch.allclose(expected, logits(model, tokenizer)), "the plan must change the logits"
    assert torch.equal(logits(model, tokenizer, single), expected)


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_one_artifact_equals_its_intervention_at_the_recommended_layers(name):
    model, tokenizer = tiny("llama")
    artifact = ARTIFACTS[name]
    expected = logits(model, tokenizer, [to_intervention(artifact, language="deu" if name == "lape" else None)])
    assert not torch.allclose(expected, logits(model, tokenizer))
    assert torch.equal(logits(model, tokenizer, artifact), expected)


def test_a_shift_vector_is_added_at_its_recommended_layer_with_strength_one():
    model, tokenizer = tiny("llama")
    by_hand = AddVector({2: SHIFT.vectors[2]}, 1.0, "resid")  # independent of to_intervention
    assert torch.equal(logits(model, tokenizer, SHIFT), logits(model, tokenizer, [by_hand]))
    assert torch.equal(logits(model, tokenizer, (SHIFT, LAST)), logits(model, tokenizer, [(by_hand, LAST)]))


def test_a_mixed_list_equals_the_explicit_plan():
    model, tokenizer = tiny("llama")
    lape = ARTIFACTS["lape"]
    mixed = [SHIFT, (MAP, LAST), ADD, (lape, Schedule(decode="none"))]
    explicit = [
        (to_intervention(SHIFT), Schedule()),
        (MAP, LAST),
        (ADD, Schedule()),
        (ZeroNeurons(lape.units("deu")), Schedule(decode="none")),
    ]
    assert torch.equal(logits(model, tokenizer, (step for step in mixed)), logits(model, tokenizer, explicit))
    assert torch.equal(logits(model, tokenizer, mixed), logits(model, tokenizer, explicit))
    assert not torch.allclose(logits(model, tokenizer, mixed), logits(model, tokenizer, explicit[:3]))


TWO_LANGUAGES = NeuronSet("mlp_gate", {"deu": torch.tensor([[1, 3]]), "rus": torch.tensor([[2, 5]])}, method="LAPE")
BAD = {
    "number": (5, r"steer\(\): got int 5 as the plan; expected an intervention"),
    "string": ("add", r"got str 'add' as the plan"),
    "dict": ({2: rand(WIDTH)}, r"got dict \{2: tensor"),
    "tensor": (rand(WIDTH), r"got Tensor tensor\("),
    "item": ([ADD, "last"], r"plan item 1: got str 'last'; expected an intervention .* or a list of these"),
    "schedule not last": ([(LAST, ADD)], r"plan item 0: got a pair whose second element is AddVector\(vectors="),
    "triple": ([(ADD, LAST, 1)], r"plan item 0: got tuple \(AddVector"),
    "schedule alone": (LAST, r"got Schedule\(prefill='last'.* \(a Schedule edits nothing alone: pair it with an"),
    "none": ([ADD, None], r"plan item 1: got NoneType None"),
    "several languages": (
        TWO_LANGUAGES,
        r"the plan is a NeuronSet with units for 2 languages \(deu, rus\): say which "
        r"to steer with, e.g. to_intervention\(neurons, language='deu'\)",
    ),
    "several in a list": ([ADD, TWO_LANGUAGES], r"plan item 1 is a NeuronSet with units for 2 languages"),
    "detector": (
        LanguageDetector(
            2,
            "resid",
            "mean",
            ("deu", "eng"),
            torch.zeros(WIDTH),
            torch.ones(WIDTH),
            torch.zeros(2, WIDTH),
            torch.zeros(2),
            {},
            {},
        ),
        r"the plan is a LanguageDetector, which does not edit the model; .* languages=detector\)$",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_plans_say_what_was_given_and_leave_no_hook(name):
    model, tokenizer = tiny("llama")
    plan, message = BAD[name]
    before = hook_count(model)
    with pytest.raises(InterventionError, match=message):
        steer(model, plan)
    assert hook_count(model) == before and "generate" not in vars(model)


def test_the_handle_applies_until_removed():
    model, tokenizer = tiny("llama")
    before, plain, steered = hook_count(model), logits(model, tokenizer), logits(model, tokenizer, ADD)
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    handle = steer(model, ADD)
    assert isinstance(handle, SteerHandle) and hook_count(model) > before and "generate" in vars(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, steered)
    handle.remove()
    handle.remove()  # a second remove does nothing
    assert hook_count(model) == before and "generate" not in vars(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, plain)
    with pytest.raises(InterventionError, match="was removed; call steer"):
        with handle:
            pass


@pytest.mark.parametrize("make", [steer, SteerHandle], ids=["steer", "SteerHandle"])
def test_the_handle_is_a_context_manager_that_never_leaks(make):
    model, tokenizer = tiny("llama")
    before, steered = hook_count(model), logits(model, tokenizer, [ADD])
    ids, mask = prompt_batch(tokenizer, TEXTS[:3])
    with make(model, ADD) as handle, torch.no_grad():
        assert isinstance(handle, SteerHandle)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, steered)
    assert hook_count(model) == before and "generate" not in vars(model) and handle.removed
    made = make(model, [ADD])  # made first, entered later: removed when its block ends
    with pytest.raises(RuntimeError, match="inside"):
        with made:
            assert hook_count(model) > before
            raise RuntimeError("inside")
    assert hook_count(model) == before and "generate" not in vars(model)


def test_generate_under_a_handle_equals_generate_in_a_block():
    model, tokenizer = tiny("llama")
    ids, mask = prompt_batch(tokenizer, TEXTS[:2])
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with steer(model, (MAP, Schedule(prefill="last", decode=2))):
        expected = model.generate(input_ids=ids, attention_mask=mask, **options)
    handle = steer(model, (MAP, Schedule(prefill="last", decode=2)))
    try:
        assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **options), expected)
    finally:
        handle.remove()
    assert not torch.equal(model.generate(input_ids=ids, attention_mask=mask, **options), expected)


def test_schedule_only_gates_and_the_old_keyword_warns_with_the_same_result():
    model, tokenizer = tiny("llama")
    each = ["eng", "deu", "jpn"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name and gated() never warn
        new = Schedule(prefill="last", only=("deu", "jpn"))
        assert gated(["deu", "jpn"], prefill="last") == new and Schedule(only="deu").only == ("deu",)
    with pytest.warns(FutureWarning, match=r"Schedule\(languages=...\) is renamed Schedule\(only=...\)"):
        old = Schedule(prefill="last", languages=("deu", "jpn"))
    assert old == new and old.only == ("deu", "jpn")
    with pytest.warns(FutureWarning, match="renamed"):
        assert new.languages == ("deu", "jpn")
    gated_logits = logits(model, tokenizer, (ADD, new), languages=each)
    assert torch.equal(logits(model, tokenizer, (ADD, old), languages=each), gated_logits)
    plain, touched = logits(model, tokenizer), logits(model, tokenizer, (ADD, Schedule(prefill="last")))
    assert torch.equal(gated_logits[0], plain[0]) and torch.equal(gated_logits[1:], touched[1:])
    with pytest.raises(ScheduleError, match="languages= is the old name of only=; pass only="):
        Schedule(only=("deu",), languages=("deu",))
    with pytest.raises(ScheduleError, match=r"only=\('deu', 3\): name the languages to touch as codes"):
        Schedule(only=("deu", 3))
