"""Layers on other devices than the inputs (a model split with ``device_map``): every intervention, the
pooling and the steering engine's token selection work on the tensor's own device and dtype. Without a GPU
the other device is ``meta`` (shapes, devices and dtypes computed, no values), the inputs' context stays on
the CPU."""

from __future__ import annotations

import pytest
import torch

from probes.capture import ForwardContext
from probes.capture.pooling import POOLINGS, pool
from probes.model import Site
from steer.interventions import Ablate, AddVector, ApplyMap, EditContext, HeadShift, SetNeurons, ZeroNeurons
from steer.router import BanExperts, ForceExperts, RouterBias

BATCH, TOKENS, WIDTH, HEADS, EXPERTS = 2, 5, 16, 4, 8


def context() -> ForwardContext:
    valid = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    valid[1, :2] = False
    position = (valid.cumsum(dim=1) - 1).clamp(min=0)
    return ForwardContext(
        valid=valid,
        position=position,
        prompt_length=valid.sum(dim=1),
        decode_step=torch.zeros(BATCH, TOKENS, dtype=torch.long),
        prompt_mask=valid,
        columns=torch.arange(TOKENS),
        example=torch.arange(BATCH),
        counted=valid,
        input_ids=torch.ones(BATCH, TOKENS, dtype=torch.long),
        call=0,
        first_new=0,
    )


INTERVENTIONS = {
    "add": (AddVector({3: torch.randn(WIDTH)}), (WIDTH,), "resid"),
    "ablate": (Ablate({3: torch.randn(2, WIDTH)}, means={3: torch.randn(WIDTH)}), (WIDTH,), "resid"),
    "map": (ApplyMap({3: torch.randn(WIDTH, WIDTH)}, sigma=0.5), (WIDTH,), "resid"),
    "set": (SetNeurons({3: torch.tensor([1, 4])}, {3: torch.tensor([2.0, -1.0])}), (WIDTH,), "mlp_act"),
    "zero": (ZeroNeurons({3: torch.tensor([1, 4])}), (WIDTH,), "mlp_gate"),
    "heads": (
        HeadShift({3: torch.tensor([0, 2])}, {3: torch.randn(2, WIDTH // HEADS)}),
        (HEADS, WIDTH // HEADS),
        "head",
    ),
    "router_bias": (RouterBias({3: torch.tensor([1, 5])}, delta=2.0), (EXPERTS,), "router"),
    "force": (ForceExperts({3: torch.tensor([2])}), (EXPERTS,), "router"),
    "ban": (BanExperts({3: torch.tensor([2])}), (EXPERTS,), "router"),
}


@pytest.mark.parametrize("name", INTERVENTIONS)
def test_every_intervention_edits_on_the_layers_device_and_dtype(name):
    intervention, shape, component = INTERVENTIONS[name]
    site = Site(3, component)
    x = torch.empty(BATCH, TOKENS, *shape, device="meta", dtype=torch.bfloat16)
    ctx = context()
    edited = intervention.edit(x, EditContext(site, ctx, ctx.valid, original=x))
    assert edited.device.type == "meta" and edited.dtype == torch.bfloat16 and edited.shape == x.shape


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_runs_on_the_layers_device_in_float32(pooling):
    x = torch.empty(BATCH, TOKENS, WIDTH, device="meta", dtype=torch.bfloat16)
    pooled = pool(x, context().counted, pooling)
    assert pooled.device.type == "meta" and pooled.dtype == torch.float32 and pooled.shape == (BATCH, WIDTH)


@pytest.mark.parametrize("device_map", ["auto", "sequential"])
def test_a_model_placed_by_accelerate_captures_and_steers_as_the_plain_model(device_map):
    """On this CPU accelerate places every layer on the CPU, with its device-aligning hooks around each: the
    capture and the steered logits equal those of the plain model (a GPU machine splits them for real)."""
    from probes.capture import capture
    from probes.model import load_model
    from steer.apply import steer

    plain, tokenizer = load_model("random:llama")
    placed, _ = load_model("random:llama", device_map=device_map)
    assert hasattr(placed, "hf_device_map") and not hasattr(plain, "hf_device_map")
    texts = ["Guten Morgen, wie geht es?", "Il pleut encore."]
    sites = [Site(layer, "resid") for layer in range(5)]
    ours, theirs = capture(plain, tokenizer, texts, sites), capture(placed, tokenizer, texts, sites)
    for site in sites:
        torch.testing.assert_close(theirs[site], ours[site], atol=1e-6, rtol=0)
    ids = tokenizer(texts[:1], return_tensors="pt")["input_ids"]
    plan = [AddVector({2: torch.ones(64)}, alpha=2.0)]
    with torch.no_grad(), steer(plain, plan), steer(placed, plan):
        torch.testing.assert_close(placed(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_an_unknown_device_map_is_a_clear_error():
    from probes.model import ModelError, load_model

    with pytest.raises(ModelError, match="unknown device_map 'everywhere'; choose one of auto, balanced, sequential"):
        load_model("random:llama", device_map="everywhere")


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2 avx512f avx512bw", False)],
)
def test_auto_dtype_is_bfloat16_on_a_cpu_with_native_bfloat16_only(flags, expected, monkeypatch, tmp_path):
    import probes.model.loading as loading

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real = loading.Path
    monkeypatch.setattr(loading, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p))
    assert loading.native_cpu_bf16() is expected
    assert loading.pick_dtype("auto", "cpu") == (torch.bfloat16 if expected else torch.float32)
    assert loading.pick_dtype("float32", "cpu") == torch.float32
