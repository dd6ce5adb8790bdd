"""Sites: named places in a decoder where activations are read or written.

A :class:`Site` is ``(layer, component)``. Layers count decoder blocks from 1; ``Site(0, "resid")`` is the
embedding output (the input of block 1), ``Site(i, "resid")`` the output of block ``i``. One declarative
:class:`ArchTable` per model family turns a site into a module and a side of it (its input or its
output); nothing else in the code base knows module names.

MoE families have a ``router`` component: a :class:`RouterTap` names the gate, the rule by which it turns
logits into top-k (:data:`probes.routing.RULES`), and the block's experts. :func:`tap` returns a
:class:`RouterPoint` for it; :func:`hook` on side ``"router"`` reads a ``(batch, tokens, 3, experts)`` routing
view (probabilities, top-k renormalised weights, top-k indicator; see :mod:`probes.routing`), and
:func:`probes.routing.edit_router` writes router logits before top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

COMPONENTS = ("resid", "attn_out", "mlp_out", "mlp_act", "mlp_gate", "head", "router")
Side = Literal["input", "output", "router"]


class SiteError(ValueError):
    """A site that does not exist in a model, or an architecture without a table."""


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: ``layer`` (0 = embeddings, i = block i) and ``component``."""

    layer: int
    component: str

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise SiteError(f"unknown component {self.component!r} in {self}; choose one of {', '.join(COMPONENTS)}")
        if self.layer < 0 or (self.layer == 0 and self.component != "resid"):
            raise SiteError(f"{self}: layer 0 exists only for 'resid' (the embedding output); blocks count from 1")

    def __str__(self) -> str:
        return f"{self.component}.{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse ``'resid.7'`` (the form used in store keys and on the command line)."""
        component, _, layer = text.rpartition(".")
        if not component or not layer.isdigit():
            raise SiteError(f"cannot parse site {text!r}: expected COMPONENT.LAYER, e.g. 'resid.7'")
        return cls(int(layer), component)


@dataclass(frozen=True)
class Tap:
    """Where a component lives inside one block: a submodule path ('' = the block) and which side of it."""

    path: str
    side: Side


@dataclass(frozen=True)
class RouterTap(Tap):
    """An MoE gate inside one block (side ``"router"``). ``path``: the gate module; ``rule``: how it turns
    logits into top-k ids and weights (a key of :data:`probes.routing.RULES`); ``block``: the MoE block that
    calls it; ``experts``, ``shared_expert`` and ``shared_gate`` (a sigmoid gate on the shared expert) complete
    the block."""

    rule: str = "softmax_topk"
    block: str = "mlp"
    experts: str = "mlp.experts"
    shared_expert: str | None = None
    shared_gate: str | None = None


@dataclass(frozen=True)
class RouterPoint:
    """The modules of one block's MoE layer, as :func:`tap` returns them for a ``router`` site."""

    layer: int
    block: nn.Module
    gate: nn.Module
    experts: nn.Module
    spec: RouterTap
    shared_expert: nn.Module | None = None
    shared_gate: nn.Module | None = None

    @property
    def n_experts(self) -> int:
        return int(self.gate.weight.shape[0])


@dataclass(frozen=True)
class ArchTable:
    """How one model family is laid out. Paths are relative to the causal-LM model (blocks) or the block."""

    blocks: str
    final_norm: str
    attn_out: Tap
    mlp_out: Tap
    mlp_act: Tap | None  # None in MoE families: their experts have no single per-neuron module
    mlp_gate: Tap | None
    head: Tap
    router: RouterTap | None = None
    resid: Tap = Tap("", "output")


def _llama_like(attn_out: str = "self_attn", mlp_out: str = "mlp") -> ArchTable:
    return ArchTable(
        blocks="model.layers",
        final_norm="model.norm",
        attn_out=Tap(attn_out, "output"),
        mlp_out=Tap(mlp_out, "output"),
        mlp_act=Tap("mlp.down_proj", "input"),
        mlp_gate=Tap("mlp.act_fn", "output"),
        head=Tap("self_attn.o_proj", "input"),
    )


def _moe(router: RouterTap, block: str = "mlp") -> ArchTable:
    return ArchTable(
        blocks="model.layers",
        final_norm="model.norm",
        attn_out=Tap("self_attn", "output"),
        mlp_out=Tap(block, "output"),
        mlp_act=None,
        mlp_gate=None,
        head=Tap("self_attn.o_proj", "input"),
        router=router,
    )


# Gemma 2/3 and OLMo 2 normalise each sub-block's output before adding it to the residual stream:
# their attn_out / mlp_out are what is added, i.e. the output of those norms.
_POST_NORMED = _llama_like("post_attention_layernorm", "post_feedforward_layernorm")

ARCHITECTURES: dict[str, ArchTable] = {
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "gemma2": _POST_NORMED,
    "gemma3_text": _POST_NORMED,
    "olmo2": _POST_NORMED,
    "bloom": ArchTable(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        # BLOOM's attention and MLP modules add the residual themselves; their projections give the update.
        attn_out=Tap("self_attention.dense", "output"),
        mlp_out=Tap("mlp.dense_4h_to_h", "output"),
        mlp_act=Tap("mlp.dense_4h_to_h", "input"),
        mlp_gate=Tap("mlp.gelu_impl", "output"),
        head=Tap("self_attention.dense", "input"),
    ),
    "xglm": ArchTable(
        blocks="model.layers",
        final_norm="model.layer_norm",
        attn_out=Tap("self_attn", "output"),
        mlp_out=Tap("fc2", "output"),
        mlp_act=Tap("fc2", "input"),
        mlp_gate=Tap("activation_fn", "output"),
        head=Tap("self_attn.out_proj", "input"),
    ),
    "gpt2": ArchTable(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        attn_out=Tap("attn", "output"),
        mlp_out=Tap("mlp", "output"),
        mlp_act=Tap("mlp.c_proj", "input"),
        mlp_gate=Tap("mlp.act", "output"),
        head=Tap("attn.c_proj", "input"),
    ),
    # Mixture-of-experts families. What each gate returns, checked against transformers 5.23:
    # softmax_topk: softmax(logits) -> top-k -> renormalised (Mixtral always; OLMoE, Qwen: norm_topk_prob).
    # topk_softmax: top-k of the logits -> softmax over those k (GPT-OSS: logits carry a bias; Granite).
    # sigmoid_group: sigmoid scores + selection bias, group-limited top-k (DeepSeek-V3).
    # sparsemixer: Phi-MoE's masked two-step argmax. Qwen2-MoE adds a sigmoid-gated shared expert,
    # DeepSeek-V3 an ungated one; both families have dense-MLP layers without a router.
    "mixtral": _moe(RouterTap("mlp.gate", "router")),
    "olmoe": _moe(RouterTap("mlp.gate", "router")),
    "qwen2_moe": _moe(
        RouterTap("mlp.gate", "router", shared_expert="mlp.shared_expert", shared_gate="mlp.shared_expert_gate")
    ),
    "qwen3_moe": _moe(RouterTap("mlp.gate", "router")),
    "gpt_oss": _moe(RouterTap("mlp.router", "router", rule="topk_softmax")),
    # Granite scales attn_out and mlp_out by config.residual_multiplier before adding them to the stream.
    "granitemoe": _moe(
        RouterTap(
            "block_sparse_moe.router", "router", rule="topk_softmax", block="block_sparse_moe",
            experts="block_sparse_moe.experts",
        ),
        block="block_sparse_moe",
    ),
    "phimoe": _moe(RouterTap("mlp.router", "router", rule="sparsemixer")),
    "deepseek_v3": _moe(RouterTap("mlp.gate", "router", rule="sigmoid_group", shared_expert="mlp.shared_experts")),
}


def arch_table(model: nn.Module) -> ArchTable:
    """The table for ``model``'s family (its ``config.model_type``), or a :class:`SiteError` saying how to add one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise SiteError(
            f"no site table for architecture {model_type!r}. Supported: {', '.join(sorted(ARCHITECTURES))}. "
            "To add one, register an ArchTable in probes.sites.ARCHITECTURES under the config's model_type "
            "(paths to the decoder blocks, the final norm and, per component, the submodule and side to hook)."
        )
    return ARCHITECTURES[model_type]


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` in order."""
    return model.get_submodule(arch_table(model).blocks)


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def n_heads(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "num_attention_heads", None) or config.n_head)


def router_layers(model: nn.Module) -> list[int]:
    """The layers (counted from 1) whose block has an MoE router; empty for dense models."""
    spec = arch_table(model).router
    if spec is None:
        return []
    return [i + 1 for i, block in enumerate(blocks(model)) if _has(block, spec.path)]


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def tap(model: nn.Module, site: Site) -> tuple[nn.Module | RouterPoint, Side]:
    """The module and side that hold ``site`` in ``model`` (for ``router``: a :class:`RouterPoint`)."""
    table = arch_table(model)
    layers = blocks(model)
    if site.layer > len(layers):
        raise SiteError(f"{site}: the model has {len(layers)} blocks (layers 0..{len(layers)})")
    if site.layer == 0:
        return layers[0], "input"
    where = getattr(table, site.component)
    if where is None:
        raise SiteError(f"{site}: component {site.component!r} does not exist in a {model.config.model_type} model")
    block = layers[site.layer - 1]
    if isinstance(where, RouterTap):
        return _router_point(model, site, block, where), where.side
    return (block.get_submodule(where.path) if where.path else block), where.side


def _router_point(model: nn.Module, site: Site, block: nn.Module, spec: RouterTap) -> RouterPoint:
    if not _has(block, spec.path):
        raise SiteError(
            f"{site}: block {site.layer} of this {model.config.model_type} model has a dense MLP, no router; "
            f"routed layers: {router_layers(model)}"
        )
    optional = {name: getattr(spec, name) for name in ("shared_expert", "shared_gate")}
    return RouterPoint(
        site.layer, block.get_submodule(spec.block), block.get_submodule(spec.path), block.get_submodule(spec.experts),
        spec, **{name: block.get_submodule(path) for name, path in optional.items() if path},
    )


def width(model: nn.Module, component: str) -> int:
    """Size of the last dimension of a component's tensor (for ``head``: the per-head size)."""
    if component in ("resid", "attn_out", "mlp_out"):
        return int(model.config.hidden_size)
    if component == "router":
        layers = router_layers(model)
        if not layers:
            raise SiteError(f"component 'router' does not exist in a {model.config.model_type} model (not MoE)")
        return tap(model, Site(layers[0], "router"))[0].n_experts
    module, _ = tap(model, Site(1, "mlp_act" if component == "mlp_gate" else component))
    size = _in_features(module)
    return size // n_heads(model) if component == "head" else size


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    return int(module.weight.shape[0])  # GPT-2 Conv1D stores weight as (in, out)


Hook = Callable[["torch.Tensor"], "torch.Tensor | None"]


def first_tensor(value: object) -> torch.Tensor:
    """The hidden-state tensor of a module input/output (transformers 5 returns tensors; older code, tuples)."""
    return value[0] if isinstance(value, (tuple, list)) else value  # type: ignore[index,return-value]


def hook(module: nn.Module | RouterPoint, side: Side, fn: Hook) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn`` on one side of ``module``. ``fn`` sees the hidden-state tensor; a returned tensor replaces it.

    On side ``"router"`` (a :class:`RouterPoint`) ``fn`` reads the routing view and may not return a tensor.
    """
    if side == "router":
        from probes.routing import read_router_view

        return read_router_view(module, fn)
    if side == "output":

        def on_output(_module, _args, output):
            new = fn(first_tensor(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(on_output)

    def on_input(_module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return module.register_forward_pre_hook(on_input, with_kwargs=True)
