"""The backend seam: ``backend_of`` names the one Backend that runs a model object (hf, tl, nnsight), resolving a
model with ``backend=name`` gives a model of that backend, every site, early exit and pass goes through its
answer, and a backend of one's own is one ``register_backend`` call that resolving and capture then use."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from conftest import TEXTS, through, tiny
from probes import choices
from probes.capture import capture, trace
from probes.capture.decoder import add_early_exit
from probes.capture.passes import forward, generate
from probes.model import (
    BACKENDS_BY_NAME,
    Backend,
    BackendError,
    HookSet,
    ModelError,
    Site,
    backend_names,
    backend_of,
    blocks,
    hook_point,
    locate,
    register_backend,
    resolve_model,
    unregister_backend,
    unwrap,
)
from probes.model.access import site_location
from probes.model.backend import BUILTIN_BACKENDS, HF, NNSIGHT, TL, HFBackend


def test_backend_of_names_hf_tl_and_nnsight_models():
    model, _ = tiny("llama")
    bridge, lm = through("tl", "llama"), through("nnsight", "llama")
    assert backend_of(model) is HF and backend_of(model).name == "hf"
    assert backend_of(bridge) is TL and backend_of(unwrap(bridge)) is TL, "the bridge and the model inside it"
    assert backend_of(lm) is NNSIGHT
    assert backend_of(unwrap(lm)) is HF, "the transformers model inside an nnsight model is run as it is"
    assert backend_of(object()) is HF, "hf answers last, for anything"


def test_the_registry_holds_each_builtin_backend_under_a_name_probes_choices_lists():
    assert BUILTIN_BACKENDS == ("hf", "tl", "nnsight")
    assert set(BUILTIN_BACKENDS) <= set(choices.BACKENDS)
    assert backend_names()[: len(choices.BACKENDS)] == choices.BACKENDS
    for name in BUILTIN_BACKENDS:
        backend = BACKENDS_BY_NAME[name]
        assert backend.name == name and isinstance(backend, Backend)


@pytest.mark.parametrize("name", ["hf", "tl", "nnsight"])
def test_resolving_with_a_backend_name_gives_a_model_of_that_backend(name):
    model, tokenizer = tiny("llama")
    resolved, _ = resolve_model(model, tokenizer, backend=name)
    assert backend_of(resolved).name == name
    assert (resolved is model) == (name == "hf"), "hf runs the model itself, the others a copy"
    again, _ = resolve_model(resolved, tokenizer, backend=name)
    assert again is resolved, "a model of the backend is run as it is"


def test_each_backend_answers_where_sites_are_and_where_the_pass_stops():
    model, _ = tiny("llama")
    bridge, lm = through("tl", "llama"), through("nnsight", "llama")
    site = Site(2, "mlp_out")
    assert site_location(model, site) == locate(model, site)
    assert site_location(bridge, site) == (hook_point(bridge, site), "output")
    assert site_location(lm, site) == locate(lm, site), "nnsight hooks the modules hf hooks"
    assert HF.early_exit_point(model, 0) == (blocks(model)[0], "input")
    assert HF.early_exit_point(model, 2) == (blocks(model)[1], "output")
    assert HF.early_exit_point(model, len(blocks(model))) is None, "after the last block the pass runs on"
    assert TL.early_exit_point(bridge, 0) == (hook_point(bridge, Site(0, "resid")), "output")
    assert TL.early_exit_point(bridge, 2) == (blocks(bridge)[1], "output")
    with HookSet() as hooks:
        add_early_exit(hooks, bridge, 0)
        assert hook_point(bridge, Site(0, "resid"))._forward_hooks, "the decoder loop asks the backend"


def test_an_nnsight_model_around_a_bridged_model_keeps_the_bridge_hook_points():
    _, tokenizer = tiny("llama")
    lm, _ = resolve_model(through("tl", "llama"), tokenizer, backend="nnsight")
    assert backend_of(lm) is NNSIGHT and backend_of(unwrap(lm)) is TL
    site = Site(2, "resid")
    assert site_location(lm, site) == (hook_point(lm, site), "output")
    assert NNSIGHT.early_exit_point(lm, 0) == TL.early_exit_point(lm, 0)


class Counting(HFBackend):
    """A toy backend: hf's hooks, on copies it made and remembers, counting the calls it is given."""

    name = "counting"

    def __init__(self) -> None:
        self.made: weakref.WeakSet = weakref.WeakSet()
        self.calls: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def owns(self, model) -> bool:
        return model in self.made

    def wrap(self, model, tokenizer, *, copy_model: bool):
        if self.owns(model):
            return model
        made = copy.deepcopy(model) if copy_model else model
        self.made.add(made)
        return made

    def site_location(self, model, site):
        self._count("site_location")
        return super().site_location(model, site)

    def forward(self, model, context, **inputs):
        self._count("forward")
        return super().forward(model, context, **inputs)

    def decoder_forward(self, model, context, **inputs):
        self._count("decoder_forward")
        return super().decoder_forward(model, context, **inputs)

    def generate(self, model, context, **kwargs):
        self._count("generate")
        return super().generate(model, context, **kwargs)


@pytest.fixture
def counting():
    backend = register_backend(Counting())
    try:
        yield backend
    finally:
        unregister_backend(backend.name)


def test_a_registered_backend_is_what_resolving_capture_and_passes_use(counting):
    model, tokenizer = tiny("llama")
    assert "counting" in backend_names()
    toy, _ = resolve_model(model, tokenizer, backend="counting")
    assert toy is not model and backend_of(toy) is counting and backend_of(model) is HF
    sites = [Site(1, "resid"), Site(2, "mlp_out")]
    pooled = capture(toy, tokenizer, TEXTS, sites, pooling="mean")
    assert counting.calls["decoder_forward"] >= 1 and counting.calls["site_location"] >= len(sites)
    expected = capture(model, tokenizer, TEXTS, sites, pooling="mean")
    for site in sites:
        torch.testing.assert_close(pooled[site], expected[site], atol=0, rtol=0)
    assert trace(toy, tokenizer, TEXTS[:2], sites).tokens(sites[0])
    ids = tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(forward(toy, input_ids=ids).logits, model(input_ids=ids).logits)
    generated = generate(toy, input_ids=ids, max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 2)
    assert counting.calls["forward"] == 1 and counting.calls["generate"] == 1


def test_registering_refuses_builtin_names_and_unregistering_forgets_the_name(counting):
    model, tokenizer = tiny("llama")
    toy, _ = resolve_model(model, tokenizer, backend="counting")

    class Impostor(HFBackend):
        name = "tl"

    with pytest.raises(BackendError, match="built-in backend"):
        register_backend(Impostor())
    with pytest.raises(BackendError, match="built-in backend"):
        unregister_backend("hf")
    unregister_backend("counting")
    assert backend_of(toy) is HF and "counting" not in BACKENDS_BY_NAME
    with pytest.raises(ModelError, match="unknown backend 'counting'"):
        resolve_model(model, tokenizer, backend="counting")
