"""Patch: write activations recorded from another run (activation patching, clean -> corrupted).

    clean = trace(model, tokenizer, clean_texts, [Site(4, "resid")])
    with steer(model, [(Patch.from_recording(clean, "resid", [4]), Schedule(prefill=(-1, None), decode="none"))]):
        corrupted = trace(model, tokenizer, corrupted_texts, sites)

A token of example ``e`` at position ``p`` (its index among the example's non-pad tokens) receives the recorded
value of token ``p`` of example ``e``, so left and right padding and xlalign's length-sorted batches line up.
Selecting a token the recording does not have (a longer corrupted text, a generated token) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from probes.capture import Recording
from probes.model import Site
from steer.interventions import EditContext, InterventionError, expect, finite


@dataclass(frozen=True)
class Patch:
    """``values[layer][e]``: the ``(tokens, *shape)`` activations of example ``e`` to write at ``component``."""

    values: dict[int, Sequence[Float[Tensor, "tokens *shape"]]] = field(repr=False)
    component: str = "resid"
    _padded: dict[int, Tensor] = field(init=False, repr=False, compare=False)
    _lengths: dict[int, Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        padded, lengths = {}, {}
        for layer, examples in self.values.items():
            examples = finite([torch.as_tensor(example).detach() for example in examples], f"values[{layer}]", "Patch")
            if not examples or len({tuple(e.shape[1:]) for e in examples}) != 1:
                raise InterventionError(f"Patch layer {layer}: give one (tokens, *shape) tensor per example, one shape")
            lengths[int(layer)] = torch.tensor([len(e) for e in examples])
            padded[int(layer)] = torch.nn.utils.rnn.pad_sequence(examples, batch_first=True)
        object.__setattr__(self, "_padded", padded)
        object.__setattr__(self, "_lengths", lengths)

    @classmethod
    def from_recording(
        cls, recording: Recording, component: str = "resid", layers: Sequence[int] | None = None
    ) -> Patch:
        """Patch the recorded ``component`` sites (all recorded layers, or ``layers``)."""
        recorded = [site.layer for site in recording.sites if site.component == component]
        chosen = recorded if layers is None else list(layers)
        missing = sorted(set(chosen) - set(recorded))
        if missing or not chosen:
            raise InterventionError(
                f"the recording has no {component} sites at layers {missing or chosen}; "
                f"it has {', '.join(map(str, recording.sites))}"
            )
        return cls({layer: recording.tokens(Site(layer, component)) for layer in chosen}, component)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self._padded))

    def check(self, site: Site, shape: tuple[int, ...]) -> None:
        expect(site, "a patched value", tuple(self._padded[site.layer].shape[2:]), shape)

    def edit(self, x: Tensor, ctx: EditContext) -> Tensor:
        padded, lengths = self._padded[ctx.layer], self._lengths[ctx.layer].to(ctx.position.device)
        example = ctx.example
        if int(example.max()) >= len(lengths):
            raise InterventionError(
                f"{ctx.site}: the batch has example {int(example.max())}, the patch holds {len(lengths)} examples"
            )
        inside = ctx.position < lengths[example][:, None]
        beyond = ctx.selected & ctx.valid & ~inside
        if beyond.any():
            row = int(beyond.nonzero()[0, 0])
            raise InterventionError(
                f"{ctx.site}: example {int(example[row])} has a selected token at position "
                f"{int(ctx.position[beyond][0])}, but the recording holds {int(lengths[example[row]])} tokens for it"
            )
        rows = example.cpu()[:, None]
        values = padded[rows, ctx.position.cpu().clamp(0, padded.shape[1] - 1)].to(x)
        keep = inside.to(x.device).view(*inside.shape, *(1,) * (x.dim() - 2))
        return torch.where(keep, values, x)
