"""The TransformerLens backend: sites read and written at a ``TransformerBridge``'s hook points.

``transformer_bridge(model, tokenizer)`` boots a bridge on a *copy* of the model (the bridge switches attention
to eager and wraps the decoder layers in place; the user's model must never change). A bridge, or the
transformers model inside one (``bridge.original_model``), can then be passed wherever xlalign takes a model:
its decoder runs as usual, and every site is read and edited at the bridge hook point of :data:`BRIDGE_HOOKS`
(the hook points TransformerLens users hook with ``run_with_hooks``), so what xlalign sees is what a
TransformerLens hook sees; a ``router`` site is read and edited at the transformers gate inside the bridge's
gate component (:func:`bridge_router`). The parity tests prove each hook point equals the ``hf`` site.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile

from torch import nn

from probes.model.architectures import RouterPoint, blocks, final_norm, has_submodule, locate, unwrap
from probes.model.sites import BackendError, Site

# Component -> hook point inside the bridge's block (blocks.{layer - 1}.<hook>).
BRIDGE_HOOKS: dict[str, str] = {
    "resid": "hook_out",
    "attn_out": "attn.hook_out",
    "mlp_out": "mlp.hook_out",
    "mlp_act": "mlp.out.hook_in",
    "head": "attn.o.hook_in",
    "q_proj": "attn.q.hook_out",
    "k_proj": "attn.k.hook_out",
    "v_proj": "attn.v.hook_out",
    "o_proj": "attn.o.hook_out",
    "gate_proj": "mlp.gate.hook_out",
    "up_proj": "mlp.in.hook_out",
    "down_proj": "mlp.out.hook_out",
}
# Families that normalise a sublayer's output before adding it (Gemma): what is added is the norm's output.
POST_NORM_HOOKS = {"attn_out": "ln1_post.hook_out", "mlp_out": "ln2_post.hook_out"}
UNSUPPORTED = {
    "mlp_gate": "the bridge has no hook point on the MLP's activation function (its hook_post is the product "
    "act(gate) * up, xlalign's mlp_act)",
    "qkv_proj": "the bridge splits the fused projection into q, k and v hook points",
}


def is_bridge(model: object) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (checked without importing TransformerLens)."""
    return type(model).__module__.startswith("transformer_lens.") and hasattr(model, "original_model")


def is_bridged(model: nn.Module) -> bool:
    """Whether ``model``'s decoder blocks are TransformerLens bridge components (a bridge or the model inside)."""
    return type(blocks(model)[0]).__module__.startswith("transformer_lens.")


def hook_point(model: nn.Module, site: Site) -> nn.Module:
    """The bridge hook point that holds ``site`` (its output is the site's tensor)."""
    if site.component in UNSUPPORTED:
        raise BackendError(
            f"{site}: the TransformerLens backend cannot read or edit {site.component!r}: "
            f"{UNSUPPORTED[site.component]}; use backend='hf'"
        )
    locate(model, site)  # the site exists in this model (as the hf backend checks it)
    layers = blocks(model)
    if site.layer == 0:
        return layers[0].get_submodule("hook_in")
    if site.component == "hidden":
        if site.layer == len(layers):
            return final_norm(model).get_submodule("hook_out")
        site = Site(site.layer, "resid")
    block = layers[site.layer - 1]
    path = BRIDGE_HOOKS[site.component]
    post_norm = POST_NORM_HOOKS.get(site.component)
    if post_norm is not None and has_submodule(block, post_norm):
        path = post_norm
    if not has_submodule(block, path):
        raise BackendError(
            f"{site}: this TransformerBridge has no hook point blocks.{site.layer - 1}.{path}; use backend='hf'"
        )
    return block.get_submodule(path)


def bridge_router(model: nn.Module, site: Site) -> RouterPoint:
    """The MoE layer of a ``router`` site with the transformers gate the bridge's gate component wraps: an edit
    there comes before the bridge's ``gate.hook_out`` (the logits), ``hook_expert_weights`` and
    ``hook_expert_indices``, so TransformerLens hooks see the routing the experts receive."""
    point = locate(model, site)
    return dataclasses.replace(point, gate=getattr(point.gate, "original_component", None) or point.gate)


def transformer_bridge(model: nn.Module, tokenizer, *, copy_model: bool = True):
    """A ``TransformerBridge`` on a copy of ``model`` (``copy_model=False``: on ``model`` itself, which it then
    changes) with a copy of ``tokenizer``; pass it, or its ``original_model``, wherever xlalign takes a model."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        raise BackendError("backend 'tl' needs TransformerLens: pip install 'xlalign[tl]'") from error
    hf = copy.deepcopy(unwrap(model)) if copy_model else unwrap(model)
    architectures = hf.config.architectures
    parameter = next(hf.parameters())
    # The bridge gets a copy of the tokenizer, saved and loaded again: booting reloads it from its
    # ``name_or_path`` (an in-memory tokenizer has none) and may change the padding side of the object it is given.
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        # Booting finds the adapter by config.architectures, which models built from a config lack; it is put
        # back afterwards, so the model's identity (stores, artifacts) is the same under every backend.
        hf.config.architectures = architectures or [type(hf).__name__]
        try:
            return TransformerBridge.boot_transformers(
                hf.config.architectures[0],
                hf_model=hf,
                tokenizer=AutoTokenizer.from_pretrained(folder),
                dtype=parameter.dtype,
                device=parameter.device,
            )
        finally:
            hf.config.architectures = architectures
