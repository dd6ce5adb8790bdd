"""Check an architecture table against the model itself: every site exists and ``resid`` equals the model's own
``output_hidden_states`` (the last one after the final norm), on a short input."""

from __future__ import annotations

import torch
from torch import nn

from probes.model.access import read_site
from probes.model.architectures import arch_table, decoder, final_norm, model_type, n_layers, site_shape
from probes.model.hooks import HookSet
from probes.model.sites import COMPONENTS, LINEAR_COMPONENTS, Site, SiteError


def validate_architecture(model: nn.Module, *, atol: float = 1e-4) -> None:
    """Raise :class:`SiteError` naming the first table entry that is wrong for ``model``."""
    table = arch_table(model)
    name = model_type(model)
    try:
        depth = n_layers(model)
        for component in COMPONENTS:
            if component in ("router", "hidden"):
                continue
            listed = table.linear if component in LINEAR_COMPONENTS else {component: getattr(table, component)}
            if listed.get(component) is not None:
                site_shape(model, Site(1, component))  # the submodule exists
        norm = final_norm(model)
    except (AttributeError, TypeError, IndexError) as error:
        raise SiteError(f"{name}: a path of its ArchTable does not exist in the model ({error})") from None
    vocab = int(getattr(decoder(model).get_input_embeddings(), "num_embeddings", 16))
    ids = torch.arange(1, min(9, vocab))[None].to(next(model.parameters()).device)
    seen: dict[int, torch.Tensor] = {}
    with torch.inference_mode(), HookSet() as hooks:
        for layer in range(depth + 1):
            read_site(hooks, model, Site(layer, "resid"), lambda x, layer=layer: seen.__setitem__(layer, x.clone()))
        hidden = decoder(model)(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        try:
            last = norm(seen[depth])
        except Exception as error:  # a module that is not a norm fails in its own way
            raise SiteError(
                f"{name}: final_norm {table.final_norm!r} cannot be applied to resid.{depth} ({error})"
            ) from None
    if len(hidden) != depth + 1:
        raise SiteError(f"{name}: the table finds {depth} blocks, the model reports {len(hidden) - 1}")
    for layer in range(depth + 1):
        expected, got = hidden[layer].float(), (last if layer == depth else seen[layer]).float()
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=1e-3):
            where = f"after final_norm {table.final_norm!r}" if layer == depth else f"the output of block {layer}"
            raise SiteError(
                f"{name}: resid.{layer} read through the table ({where}) differs from output_hidden_states"
                f"[{layer}]; check the paths of blocks and final_norm in its ArchTable"
            )
