"""Per-family architecture tables: where each site lives inside a decoder.

One declarative :class:`ArchTable` per ``config.model_type`` (TransformerLens / nnterp style). Paths are
relative to the *decoder* (``model.base_model``: ``LlamaModel`` inside ``LlamaForCausalLM``), so a causal LM,
a bare decoder (``AutoModel``) and a PEFT-wrapped model are read through the same table. An unknown family is
added with :func:`register_architecture`; :func:`probes.model.validation.validate_architecture` checks a
table against the model's own ``output_hidden_states``.

MoE families have a ``router`` component: a :class:`RouterTap` names the gate, the rule by which it turns
logits into top-k (:data:`probes.model.moe.RULES`), and the block's experts; :func:`locate` returns a
:class:`RouterPoint` for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from torch import nn

from probes.model.sites import LINEAR_COMPONENTS, Site, SiteError

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Tap:
    """Where a component lives inside one block: a submodule path ('' = the block) and which side of it."""

    path: str
    side: Side


@dataclass(frozen=True)
class RouterTap:
    """An MoE gate inside one block. ``path``: the gate module; ``rule``: how it turns logits into top-k ids and
    weights (a key of :data:`probes.model.moe.RULES`); ``block``: the MoE block that calls it; ``experts``,
    ``shared_expert`` and ``shared_gate`` (a sigmoid gate on the shared expert) complete the block."""

    path: str
    rule: str = "softmax_topk"
    block: str = "mlp"
    experts: str = "mlp.experts"
    shared_expert: str | None = None
    shared_gate: str | None = None


@dataclass(frozen=True)
class RouterPoint:
    """The modules of one block's MoE layer, as :func:`locate` returns them for a ``router`` site."""

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
    """How one model family is laid out. ``blocks`` and ``final_norm`` are relative to the decoder, the rest to
    one block. ``mlp_act`` / ``mlp_gate`` are None in MoE families (no single per-neuron module). ``linear``
    maps each linear-projection component the family has (:data:`probes.model.sites.LINEAR_COMPONENTS`) to
    its module; the site is that module's output."""

    blocks: str
    final_norm: str
    attn_out: Tap
    mlp_out: Tap
    mlp_act: Tap | None
    mlp_gate: Tap | None
    head: Tap
    router: RouterTap | None = None
    resid: Tap = Tap("", "output")
    linear: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.linear) - set(LINEAR_COMPONENTS))
        if unknown:
            raise SiteError(
                f"ArchTable.linear: unknown components {unknown}; choose from {', '.join(LINEAR_COMPONENTS)}"
            )


_ATTENTION = {name: f"self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
_GATED_MLP = {name: f"mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")}


def _llama_like(attn_out: str = "self_attn", mlp_out: str = "mlp") -> ArchTable:
    return ArchTable(
        blocks="layers",
        final_norm="norm",
        attn_out=Tap(attn_out, "output"),
        mlp_out=Tap(mlp_out, "output"),
        mlp_act=Tap("mlp.down_proj", "input"),
        mlp_gate=Tap("mlp.act_fn", "output"),
        head=Tap("self_attn.o_proj", "input"),
        linear=_ATTENTION | _GATED_MLP,
    )


def _moe(router: RouterTap, block: str = "mlp", linear: Mapping[str, str] = _ATTENTION) -> ArchTable:
    return ArchTable(
        blocks="layers",
        final_norm="norm",
        attn_out=Tap("self_attn", "output"),
        mlp_out=Tap(block, "output"),
        mlp_act=None,
        mlp_gate=None,
        head=Tap("self_attn.o_proj", "input"),
        router=router,
        linear=linear,  # the experts' projections are not one module each
    )


# Gemma 2/3 and OLMo 2 normalise each sub-block's output before adding it to the residual stream:
# their attn_out / mlp_out are what is added, i.e. the output of those norms.
_POST_NORMED = _llama_like("post_attention_layernorm", "post_feedforward_layernorm")

BUILTIN: dict[str, ArchTable] = {
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "gemma2": _POST_NORMED,
    "gemma3_text": _POST_NORMED,
    "olmo2": _POST_NORMED,
    "bloom": ArchTable(
        blocks="h",
        final_norm="ln_f",
        # BLOOM's attention and MLP modules add the residual themselves; their projections give the update.
        attn_out=Tap("self_attention.dense", "output"),
        mlp_out=Tap("mlp.dense_4h_to_h", "output"),
        mlp_act=Tap("mlp.dense_4h_to_h", "input"),
        mlp_gate=Tap("mlp.gelu_impl", "output"),
        head=Tap("self_attention.dense", "input"),
        linear={
            "qkv_proj": "self_attention.query_key_value",
            "o_proj": "self_attention.dense",
            "up_proj": "mlp.dense_h_to_4h",
            "down_proj": "mlp.dense_4h_to_h",
        },
    ),
    "xglm": ArchTable(
        blocks="layers",
        final_norm="layer_norm",
        attn_out=Tap("self_attn", "output"),
        mlp_out=Tap("fc2", "output"),
        mlp_act=Tap("fc2", "input"),
        mlp_gate=Tap("activation_fn", "output"),
        head=Tap("self_attn.out_proj", "input"),
        linear={
            **{name: f"self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj")},
            "o_proj": "self_attn.out_proj",
            "up_proj": "fc1",
            "down_proj": "fc2",
        },
    ),
    "gpt2": ArchTable(
        blocks="h",
        final_norm="ln_f",
        attn_out=Tap("attn", "output"),
        mlp_out=Tap("mlp", "output"),
        mlp_act=Tap("mlp.c_proj", "input"),
        mlp_gate=Tap("mlp.act", "output"),
        head=Tap("attn.c_proj", "input"),
        linear={"qkv_proj": "attn.c_attn", "o_proj": "attn.c_proj", "up_proj": "mlp.c_fc", "down_proj": "mlp.c_proj"},
    ),
    # Mixture-of-experts families. What each gate returns, checked against transformers 5.23:
    # softmax_topk: softmax(logits) -> top-k -> renormalised (Mixtral always; OLMoE, Qwen: norm_topk_prob).
    # topk_softmax: top-k of the logits -> softmax over those k (GPT-OSS: logits carry a bias; Granite).
    # sigmoid_group: sigmoid scores + selection bias, group-limited top-k (DeepSeek-V3).
    # sparsemixer: Phi-MoE's masked two-step argmax. Qwen2-MoE adds a sigmoid-gated shared expert,
    # DeepSeek-V3 an ungated one; both families have dense-MLP layers without a router.
    "mixtral": _moe(RouterTap("mlp.gate")),
    "olmoe": _moe(RouterTap("mlp.gate")),
    "qwen2_moe": _moe(RouterTap("mlp.gate", shared_expert="mlp.shared_expert", shared_gate="mlp.shared_expert_gate")),
    "qwen3_moe": _moe(RouterTap("mlp.gate")),
    "gpt_oss": _moe(RouterTap("mlp.router", rule="topk_softmax")),
    # Granite scales attn_out and mlp_out by config.residual_multiplier before adding them to the stream.
    "granitemoe": _moe(
        RouterTap(
            "block_sparse_moe.router", rule="topk_softmax", block="block_sparse_moe", experts="block_sparse_moe.experts"
        ),
        block="block_sparse_moe",
    ),
    "phimoe": _moe(RouterTap("mlp.router", rule="sparsemixer")),
    # DeepSeek-V3's latent attention has no q/k/v projections of the usual kind: only o_proj is listed.
    "deepseek_v3": _moe(
        RouterTap("mlp.gate", rule="sigmoid_group", shared_expert="mlp.shared_experts"),
        linear={"o_proj": "self_attn.o_proj"},
    ),
}

ARCHITECTURES: dict[str, ArchTable] = dict(BUILTIN)


def register_architecture(model_type: str, table: ArchTable, *, replace: bool = False) -> None:
    """Add the table of a family xlalign does not know (``config.model_type``). Check it on a model with
    :func:`probes.model.validation.validate_architecture`; :func:`probes.model.loading.load_model` does so on load."""
    if not isinstance(table, ArchTable):
        raise SiteError(f"register_architecture({model_type!r}): expected an ArchTable, got {type(table).__name__}")
    if model_type in ARCHITECTURES and not replace:
        raise SiteError(f"architecture {model_type!r} already has a table; pass replace=True to change it")
    ARCHITECTURES[model_type] = table


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper, a TransformerLens ``TransformerBridge`` or an nnsight model
    (the wrapper's own modules: hooks on them see every call)."""
    if type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    if type(model).__module__.startswith("transformer_lens.") and hasattr(model, "original_model"):
        return model.original_model
    if type(model).__module__.startswith("nnsight.") and hasattr(model, "_module"):
        return model._module
    return model


def arch_table(model: nn.Module) -> ArchTable:
    """The table for ``model``'s family (its ``config.model_type``), or a :class:`SiteError` saying how to add one."""
    model_type = getattr(getattr(unwrap(model), "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise SiteError(
            f"no site table for architecture {model_type!r}. Supported: {', '.join(sorted(ARCHITECTURES))}. "
            "To add one, call probes.model.register_architecture(model_type, ArchTable(...)) with the paths of the "
            "decoder blocks and the final norm (relative to model.base_model) and, per component, the submodule "
            "and side to hook; validate_architecture(model) checks it against output_hidden_states."
        )
    return ARCHITECTURES[model_type]


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``base_model``; a bare decoder is its own)."""
    return unwrap(model).base_model


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` in order."""
    return decoder(model).get_submodule(arch_table(model).blocks)


def final_norm(model: nn.Module) -> nn.Module:
    return decoder(model).get_submodule(arch_table(model).final_norm)


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def n_heads(model: nn.Module) -> int:
    config = unwrap(model).config
    return int(getattr(config, "num_attention_heads", None) or config.n_head)


def model_type(model: nn.Module) -> str:
    return str(unwrap(model).config.model_type)


def router_layers(model: nn.Module) -> list[int]:
    """The layers (counted from 1) whose block has an MoE router; empty for dense models."""
    spec = arch_table(model).router
    if spec is None:
        return []
    return [i + 1 for i, block in enumerate(blocks(model)) if has_submodule(block, spec.path)]


def has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def locate(model: nn.Module, site: Site) -> tuple[nn.Module, Side] | RouterPoint:
    """The module and side that hold ``site`` in ``model``, or for ``router`` sites a :class:`RouterPoint`."""
    table = arch_table(model)
    layers = blocks(model)
    if site.layer > len(layers):
        raise SiteError(f"{site}: the model has {len(layers)} blocks (layers 0..{len(layers)})")
    if site.layer == 0:
        return layers[0], "input"
    if site.component == "hidden":
        return (final_norm(model), "output") if site.layer == len(layers) else locate(model, Site(site.layer, "resid"))
    if site.component in LINEAR_COMPONENTS:
        path = table.linear.get(site.component)
        if path is None:
            raise SiteError(
                f"{site}: a {model_type(model)} model has no {site.component}; its linear projections: "
                f"{', '.join(table.linear) or 'none in the table'}"
            )
        return layers[site.layer - 1].get_submodule(path), "output"
    where = getattr(table, site.component)
    if where is None:
        raise SiteError(f"{site}: component {site.component!r} does not exist in a {model_type(model)} model")
    block = layers[site.layer - 1]
    if isinstance(where, RouterTap):
        return _router_point(model, site, block, where)
    return (block.get_submodule(where.path) if where.path else block), where.side


def _router_point(model: nn.Module, site: Site, block: nn.Module, spec: RouterTap) -> RouterPoint:
    if not has_submodule(block, spec.path):
        raise SiteError(
            f"{site}: block {site.layer} of this {model_type(model)} model has a dense MLP, no router; "
            f"routed layers: {router_layers(model)}"
        )
    optional = {name: getattr(spec, name) for name in ("shared_expert", "shared_gate")}
    return RouterPoint(
        site.layer,
        block.get_submodule(spec.block),
        block.get_submodule(spec.path),
        block.get_submodule(spec.experts),
        spec,
        **{name: block.get_submodule(path) for name, path in optional.items() if path},
    )


def width(model: nn.Module, component: str) -> int:
    """Size of the last dimension of a component's tensor (for ``head``: the per-head size)."""
    if component in ("resid", "hidden", "attn_out", "mlp_out"):
        return int(unwrap(model).config.hidden_size)
    if component == "router":
        layers = router_layers(model)
        if not layers:
            raise SiteError(f"component 'router' does not exist in a {model_type(model)} model (not MoE)")
        return locate(model, Site(layers[0], "router")).n_experts
    if component in LINEAR_COMPONENTS:
        module, _ = locate(model, Site(1, component))
        return int(module.out_features) if hasattr(module, "out_features") else int(module.weight.shape[1])
    module, _ = locate(model, Site(1, "mlp_act" if component == "mlp_gate" else component))
    size = _in_features(module)
    return size // n_heads(model) if component == "head" else size


def site_shape(model: nn.Module, site: Site) -> tuple[int, ...]:
    """The per-token shape of ``site``'s tensor as readers and editors see it (``head``: (heads, head_dim);
    ``router``: (3, experts) when read, (experts,) logits when edited: see :mod:`probes.model.moe`)."""
    located = locate(model, site)  # raises for sites the model does not have
    if site.component == "head":
        return (n_heads(model), width(model, "head"))
    if site.component == "router":
        return (located.n_experts,)
    return (width(model, site.component),)


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    return int(module.weight.shape[0])  # GPT-2 Conv1D stores weight as (in, out)
