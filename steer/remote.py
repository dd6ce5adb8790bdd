"""Steered generation on NDIF through nnsight: ``generate_remote(lm, ids, mask, [AddVector(...)], remote=True)``.

The trace body NDIF runs is plain torch (no xlalign there): each AddVector becomes its tensor ``alpha * v``,
added by replacement at its site on every prompt token (pads left as they are) and every generated token, in
``tracer.iter`` over exactly ``max_new_tokens`` steps (``min_new_tokens`` holds generation to that count: an
open loop would drop the statements after it, the saved tokens among them). ``remote="local"`` is nnsight's
offline simulation of an NDIF run, ``remote=False`` the same body run locally.
"""

from __future__ import annotations

from typing import Sequence

from jaxtyping import Int
from torch import Tensor

from probes.capture.remote import check_service
from probes.model import Site, is_nnsight, locate, site_shape, unwrap
from steer.interventions import AddVector, InterventionError


def generate_remote(
    lm,
    input_ids: Int[Tensor, "batch prompt"],
    attention_mask: Int[Tensor, "batch prompt"],
    plan: Sequence[AddVector],
    *,
    max_new_tokens: int,
    remote: bool | str = True,
    **generate_options,
) -> Int[Tensor, "batch total"]:
    """Greedy prompt + ``max_new_tokens`` generated ids of the nnsight model ``lm`` with ``plan`` applied where
    ``lm`` runs (NDIF for ``remote=True``); equal to ``steer(model, plan)`` around ``model.generate``."""
    if not is_nnsight(lm):
        raise InterventionError(f"generate_remote needs an nnsight model, got {type(lm).__name__}")
    edits = _edits(lm, plan)
    check_service(lm, remote)
    steps = int(max_new_tokens)
    keep = attention_mask[..., None]
    options = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, **generate_options)
    with lm.generate(input_ids, attention_mask=attention_mask, remote=remote, **options) as tracer:
        for step in tracer.iter[0:steps]:
            for path, delta in edits:
                envoy = lm.get(path)
                value = envoy.output
                shift = delta * keep if step == 0 else delta
                envoy.output = value + shift.to(value)  # a replacement, on the model's device and dtype
        ids = tracer.result.save()
    return ids


def _edits(lm, plan: Sequence[AddVector]) -> list[tuple[str, Tensor]]:
    """(Envoy path, alpha * vector) of every plan item's layers, checked against the model."""
    inner = unwrap(lm)
    names = {module: name for name, module in inner.named_modules()}
    edits = []
    for index, item in enumerate(plan):
        if type(item) is not AddVector:
            raise InterventionError(
                f"plan item {index}: remote generation applies AddVector on every token only, "
                f"got {item!r:.80}; run other interventions locally"
            )
        for layer in item.layers:
            site = Site(layer, item.component)
            item.check(site, site_shape(inner, site))
            module, side = locate(inner, site)
            if side != "output" or site.component == "head":
                raise InterventionError(f"{site}: remote generation edits module outputs only")
            edits.append((names[module], item.alpha * item.vectors[layer].float()))
    return edits
