"""Sites: named places in a decoder where activations are read or written.

A :class:`Site` is ``(layer, component)``. Layers count decoder blocks from 1; ``Site(0, "resid")`` is the
embedding output (the input of block 1), ``Site(i, "resid")`` the output of block ``i``. The per-family tables
(:mod:`probes.model.architectures`) turn a site into a module; nothing else knows module names.

Per token, ``resid``, ``attn_out`` and ``mlp_out`` are ``(hidden,)``; ``mlp_act`` (the input of the MLP's down
projection) and ``mlp_gate`` (the activation function's output) are ``(intermediate,)``; ``head`` is
``(heads, head_dim)`` (the per-head input of the attention output projection); ``router`` is
``(3, experts)`` (see :mod:`probes.model.moe`).

The outputs of a block's linear projections are ``q_proj``, ``k_proj``, ``v_proj`` (``qkv_proj`` where the
family fuses them: BLOOM, GPT-2), ``o_proj``, ``gate_proj`` (the gate's pre-activation), ``up_proj`` and
``down_proj``, ``(out_features,)`` per token, where the family has them (Kojima et al. rank all of them together).

``hidden`` is the model's own ``output_hidden_states``, what MEXA's released code pools: ``hidden.i`` is
``resid.i`` for ``i`` below the last layer ``L``, and ``hidden.L`` the output of the final norm (``resid.L`` is
before it). Per token ``(hidden,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.choices import COMPONENTS, LINEAR_COMPONENTS  # noqa: F401 (probes.model exports both)
from probes.errors import XlalignError

# Components that exist at layer 0 (the embedding output).
FROM_EMBEDDINGS = ("resid", "hidden")


class SiteError(XlalignError):
    """A site that does not exist in a model, or an architecture without a table."""


class BackendError(SiteError):
    """A site or operation a backend cannot support, a pass it cannot see, or a backend that is not installed."""


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: ``layer`` (0 = embeddings, i = block i) and ``component``."""

    layer: int
    component: str

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise SiteError(f"unknown component {self.component!r} in {self}; choose one of {', '.join(COMPONENTS)}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise SiteError(f"{self}: the layer must be an int, got {type(self.layer).__name__}")
        if self.layer < 0:
            raise SiteError(
                f"{self}: layers count up from 0 (the embedding output) and 1 (block 1); negative layers "
                "do not exist: name the last one as n_layers(model)"
            )
        if self.layer == 0 and self.component not in FROM_EMBEDDINGS:
            raise SiteError(
                f"{self}: layer 0 exists only for 'resid' and 'hidden' (the embedding output); blocks count from 1"
            )

    def __str__(self) -> str:
        return f"{self.component}.{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse ``'resid.7'`` (the form used in store keys and on the command line)."""
        component, _, layer = text.rpartition(".")
        if not component or not layer.isdigit():
            raise SiteError(f"cannot parse site {text!r}: expected COMPONENT.LAYER, e.g. 'resid.7'")
        return cls(int(layer), component)
