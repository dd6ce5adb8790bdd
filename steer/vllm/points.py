"""Where a :class:`~probes.model.Site` lives in a model vLLM runs, and how its tensor is read and written there.

vLLM's decoder layers take and return ``(hidden_states, residual)``, both ``(num_tokens, d)``: the residual stream
after block ``N`` is their sum, the add deferred into the next layer's fused norm (and the final norm). A
``resid.N`` edit therefore returns ``(edited sum, zeros)``: the fused add then yields the edited stream exactly,
and an unedited pass is left untouched (the hook returns nothing). ``resid.0`` is the first layer's input.
``hidden.N`` is ``resid.N`` below the last layer and the final norm's output at it; ``attn_out`` and ``mlp_out``
are what a block adds to the stream (the sublayer's output, or its post-norm's in Gemma). ``mlp_act`` is the input of
the MLP's down projection, ``head`` the input of the attention output projection
(heads concatenated), ``router`` the logits the MoE gate returns (vLLM's experts then take the top-k by the
family's own rule). Under tensor parallelism the residual stream and the router logits are whole on every rank;
``mlp_act`` and ``head`` are each rank's contiguous slice (:func:`local_slice`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from probes.model import Site
from steer.errors import EngineError

SUPPORTED = ("resid", "hidden", "attn_out", "mlp_out", "mlp_act", "mlp_gate", "head", "router")
SHARDED = ("mlp_act", "mlp_gate", "head")


@dataclass(frozen=True)
class Point:
    """A site's module, the side its tensor is on, and whether it is a layer's ``(hidden, residual)`` output."""

    module: nn.Module
    side: str  # "input" or "output"
    kind: str  # "residual" (a decoder layer's output pair), "first" (a tuple's first tensor or the tensor)


def _first(module: nn.Module, paths: tuple[str, ...], what: str) -> nn.Module:
    """The first of ``paths`` that ``module`` has; an error naming ``what`` is missing."""
    for path in paths:
        try:
            return module.get_submodule(path)
        except AttributeError:
            continue
    raise EngineError(f"{what}: xlalign finds none of {', '.join(paths)} in this vLLM model")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a vLLM model (``model.model.layers``, or inside a multimodal wrapper)."""
    return _first(model, ("model.layers", "language_model.model.layers", "model.decoder.layers"), "decoder layers")


def _sublayer_output(block: nn.Module, site: Site) -> nn.Module:
    """What a block adds to the stream: the sublayer's output, or in families that normalise it before the add
    (Gemma: a ``pre_feedforward_layernorm`` beside ``post_attention_layernorm``) the norm's output."""
    sandwich = hasattr(block, "pre_feedforward_layernorm")
    if site.component == "attn_out":
        return block.post_attention_layernorm if sandwich else block.self_attn
    return _first(block, ("post_feedforward_layernorm", "mlp", "block_sparse_moe"), str(site))


def locate(model: nn.Module, site: Site) -> Point:
    """The :class:`Point` of ``site`` in the vLLM model ``model``; an error naming what is missing."""
    layers = decoder_layers(model)
    if site.component not in SUPPORTED:
        raise EngineError(
            f"{site}: xlalign's vLLM engine reads and edits {', '.join(SUPPORTED)}; {site.component!r} needs "
            "backend='hf'"
        )
    if not 0 <= site.layer <= len(layers) or (site.layer == 0 and site.component != "resid"):
        raise EngineError(f"{site}: this model has layers 1..{len(layers)} (resid.0: the embeddings)")
    if site.component == "hidden" and site.layer == len(layers):  # the final norm's output
        final_norm = ("model.norm", "language_model.model.norm", "model.decoder.final_layernorm")
        return Point(_first(model, final_norm, str(site)), "output", "first")
    if site.component in ("resid", "hidden"):  # hidden.i is resid.i below the last layer
        if site.layer == 0:
            return Point(layers[0], "input", "first")
        return Point(layers[site.layer - 1], "output", "residual")
    block = layers[site.layer - 1]
    if site.component in ("attn_out", "mlp_out"):
        return Point(_sublayer_output(block, site), "output", "first")
    paths = {
        "mlp_act": ("mlp.down_proj",),
        "mlp_gate": ("mlp.down_proj",),
        "head": ("self_attn.o_proj",),
        "router": ("block_sparse_moe.gate", "mlp.gate"),
    }[site.component]
    return Point(_first(block, paths, str(site)), "input" if site.component != "router" else "output", "first")


def read(point: Point, args: tuple, kwargs: dict, output: Any) -> Tensor:
    """The site's flattened ``(num_tokens, ...)`` tensor at ``point`` in this call (the stream: hidden + residual)."""
    if point.side == "input":
        return _hidden_input(args, kwargs)
    if point.kind == "residual" and isinstance(output, tuple) and output[1] is not None:
        return output[0] + output[1]
    return output[0] if isinstance(output, tuple) else output


def write(point: Point, args: tuple, kwargs: dict, output: Any, value: Tensor) -> Any:
    """What the hook returns so that the site's tensor becomes ``value``: new ``(args, kwargs)`` or a new output."""
    if point.side == "input":
        if len(args) > _hidden_index(point):
            args = (*args[: _hidden_index(point)], value, *args[_hidden_index(point) + 1 :])
        else:
            kwargs = {**kwargs, "hidden_states": value}
        return args, kwargs
    if point.kind == "residual" and isinstance(output, tuple) and output[1] is not None:
        return (value, output[1].new_zeros(output[1].shape), *output[2:])
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _hidden_index(point: Point) -> int:
    return 1 if point.kind == "first" and _is_layer(point.module) else 0


def _is_layer(module: nn.Module) -> bool:
    return hasattr(module, "self_attn") or hasattr(module, "mlp") or hasattr(module, "block_sparse_moe")


def _hidden_input(args: tuple, kwargs: dict) -> Tensor:
    tensors = [a for a in args if isinstance(a, Tensor)]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return tensors[1] if len(tensors) > 1 and tensors[0].dim() == 1 else tensors[0]


def local_slice(width: int, rank: int, ranks: int) -> tuple[int, int]:
    """The ``[start, stop)`` of a sharded site's ``width`` units (neurons or heads) that rank ``rank`` holds."""
    if width % ranks:
        raise EngineError(f"{width} units do not split evenly over {ranks} tensor-parallel ranks")
    size = width // ranks
    return rank * size, (rank + 1) * size


Hook = Callable[..., Any]


def site_shape(config: Any, site: Site) -> tuple[int, ...]:
    """The full per-token shape of ``site`` (as the ``hf`` backend gives it) from the model's text config."""
    heads = config.num_attention_heads
    if site.component in ("resid", "hidden", "attn_out", "mlp_out"):
        return (config.hidden_size,)
    if site.component == "head":
        return (heads, getattr(config, "head_dim", None) or config.hidden_size // heads)
    if site.component == "router":
        for name in ("num_local_experts", "num_experts", "n_routed_experts"):
            if getattr(config, name, None):
                return (int(getattr(config, name)),)
        raise EngineError(f"{site}: this model has no router (its config names no experts)")
    return (config.intermediate_size,)
