"""The parts of the vLLM engine that need no vLLM: plans as bytes, per-request token contexts, tensor-parallel slices.
(The engine itself is tested against the hf backend in tests_vllm/, in the vLLM environment.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from probes.artifacts import LanguageDetector
from probes.model import Site
from steer.errors import EngineError
from steer.interventions import Ablate, AddVector, ApplyMap, EditContext, Erase, HeadShift, SetNeurons, ZeroNeurons
from steer.patch import Patch
from steer.router import BanExperts, ForceExperts, RouterBias
from steer.schedule import Schedule
from steer.vllm.batch import request_context
from steer.vllm.points import local_slice
from steer.vllm.wire import decode_plan, encode_plan
from steer.vllm.worker import _local

D = 8
g = torch.Generator().manual_seed(0)


def every_wired_item():
    return [
        (AddVector({1: torch.randn(D, generator=g), 3: torch.randn(D, generator=g)}, alpha=0.5), Schedule()),
        (Ablate({2: torch.randn(2, D, generator=g)}, means={2: torch.randn(D, generator=g)}), Schedule(prefill="last")),
        (SetNeurons({1: torch.tensor([0, 3])}, {1: torch.tensor([2.0, -1.0])}), Schedule(decode=3)),
        (ZeroNeurons({1: torch.tensor([1, 2])}), Schedule(prefill=(-2, None), decode="none")),
        (ApplyMap({2: torch.randn(D, D, generator=g)}, sigma=0.3, rule="code"), Schedule(decode=(2, 5))),
        (Erase({2: torch.randn(D, 1)}, {2: torch.randn(1, D)}, {2: torch.randn(D)}, strength=0.5), Schedule()),
        (HeadShift({1: torch.tensor([1])}, {1: torch.randn(1, 4, generator=g)}), Schedule(only=("deu", "fra"))),
        (RouterBias({1: [2, 5]}, delta={1: torch.tensor([1.0, -2.0])}), Schedule()),
        (ForceExperts({1: [0]}, eps=0.5), Schedule()),
        (BanExperts({2: [1, 3]}), Schedule(prefill="none")),
        (Patch({1: [torch.randn(5, D, generator=g), torch.randn(3, D, generator=g)]}), Schedule(decode="none")),
    ]


def test_a_plan_arrives_as_it_was_sent():
    items = every_wired_item()
    decoded, detector = decode_plan(encode_plan(items))
    assert len(decoded) == len(items) and detector is None
    for (sent, schedule), (got, got_schedule) in zip(items, decoded):
        assert type(got) is type(sent) and got_schedule == schedule
        site = Site(sent.layers[0], sent.component)
        shape = (2, D // 2) if site.component == "head" else (D,)
        x = torch.randn(1, 5, *shape, generator=g)
        ctx = EditContext(site, request_context(0, 5, 5), torch.ones(1, 5, dtype=torch.bool), x)
        assert torch.equal(got.edit(x, ctx), sent.edit(x, ctx))


@dataclass(frozen=True)
class Scale:
    """A user's own intervention: runs under steer(), not inside vLLM."""

    component: str = "resid"
    layers: tuple[int, ...] = (1,)

    def check(self, site, shape) -> None:
        pass

    def edit(self, x, ctx):
        return 2 * x


def test_what_cannot_travel_is_refused_with_the_reason():
    with pytest.raises(EngineError, match="Scale cannot run inside vLLM; supported there: AddVector"):
        encode_plan([(Scale(), Schedule())])
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(EngineError, match="plan item 0: a prefill token mask"):
        encode_plan([(AddVector({1: torch.zeros(D)}), Schedule(prefill=mask))])


@pytest.mark.parametrize("prefill", ["all", "last", "none", (-3, None), (1, 4)])
def test_a_request_chunked_or_not_is_scheduled_as_one_unpadded_example(prefill):
    """A 6-token prompt prefilled in chunks of 4 and 2, then two decode steps, selects what one pass of it does."""
    schedule = Schedule(prefill=prefill, decode=(2, None))
    whole = request_context(0, 6, 6)
    chunks = [request_context(0, 4, 6), request_context(4, 2, 6)]
    assert torch.equal(torch.cat([schedule.select(c) for c in chunks], dim=1), schedule.select(whole))
    first, second = request_context(6, 1, 6), request_context(7, 1, 6)
    assert first.decode_step.tolist() == [[1]] and second.decode_step.tolist() == [[2]]
    assert schedule.select(first).tolist() == [[False]] and schedule.select(second).tolist() == [[True]]


@pytest.mark.parametrize("ranks", [2, 4])
def test_each_tensor_parallel_rank_applies_its_slice_of_a_neuron_or_head_edit(ranks):
    """Applied rank by rank to each rank's slice of the units and put together, the edit equals the whole one."""
    width, heads = 16, 8
    cases = [
        (SetNeurons({1: torch.tensor([0, 5, 9, 15])}, {1: torch.tensor([1.0, 2.0, 3.0, 4.0])}), (width,)),
        (ZeroNeurons({1: torch.tensor([3, 4, 12])}, component="mlp_act"), (width,)),
        (HeadShift({1: torch.tensor([0, 6, 7])}, {1: torch.randn(3, 4, generator=g)}), (heads, 4)),
    ]
    for whole, shape in cases:
        site = Site(1, whole.component)
        x = torch.randn(1, 3, *shape, generator=g)
        ctx = EditContext(site, request_context(0, 3, 3), torch.ones(1, 3, dtype=torch.bool), x)
        parts = []
        for rank in range(ranks):
            start, stop = local_slice(shape[0], rank, ranks)
            parts.append(_local(whole, site, shape[0], rank, ranks).edit(x[:, :, start:stop], ctx))
        assert torch.equal(torch.cat(parts, dim=2), whole.edit(x, ctx))
    with pytest.raises(EngineError, match="only SetNeurons, ZeroNeurons and HeadShift apply per slice"):
        _local(Ablate({1: torch.randn(width)}, component="mlp_act"), Site(1, "mlp_act"), width, 0, 2)


def a_detector(d: int = D) -> LanguageDetector:
    k = 3
    return LanguageDetector(
        layer=1,
        component="hidden",
        pooling="mean",
        languages=("deu", "eng", "fra"),
        mean=torch.randn(d, generator=g),
        scale=torch.rand(d, generator=g) + 0.5,
        weight=torch.randn(k, d, generator=g),
        bias=torch.randn(k, generator=g),
        params={"C": 1.0},
        model={"name": "random:llama"},
    )


def test_a_detector_travels_with_its_plan():
    sent = a_detector()
    items, detector = decode_plan(encode_plan(every_wired_item()[:2], sent))
    assert len(items) == 2
    assert (detector.site, detector.pooling, detector.languages) == (sent.site, sent.pooling, sent.languages)
    pooled = torch.randn(6, D, generator=g)
    assert detector.predict(pooled) == sent.predict(pooled)
    assert torch.equal(detector.logits(pooled), sent.logits(pooled))
