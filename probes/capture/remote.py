"""Pooled capture on NDIF through nnsight: ``capture_remote(lm, tokenizer, texts, sites, remote=True)``.

NDIF runs a trace on its own copy of a hosted model: only a few packages exist there (torch, transformers,
nnsight, ...), only ``.save()``d values come back and edits must be replacements. So this body is plain torch:
every batch (all of them in one ``session``, one request) pools each site's tensor inside the trace over the
batch's counted tokens with :func:`probes.capture.pooling.pool` (shipped with the request by value) and saves
only the pooled vectors. ``remote="local"`` is nnsight's offline simulation of an NDIF run (the request is
serialised and run as NDIF would run it); ``remote=False`` runs the same body locally. The API key is read from
``NDIF_API_KEY`` and set in memory only; it and the model's availability are checked before any work.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from probes.analysis.activations import check_finite
from probes.capture import pooling as pooling_module
from probes.capture.pooling import check_pooling, pool
from probes.capture.record import check_sites
from probes.capture.tokenization import Tokenization, batches
from probes.model import BackendError, RouterPoint, Site, is_nnsight, locate, n_heads, n_layers, unwrap

# Within a block, the order in which a forward pass produces the components (attention, then the MLP).
EXECUTION_ORDER = (
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "head",
    "o_proj",
    "attn_out",
    "gate_proj",
    "mlp_gate",
    "up_proj",
    "mlp_act",
    "down_proj",
    "mlp_out",
    "resid",
    "hidden",
)


def capture_remote(
    lm,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[Site],
    *,
    pooling: str = "mean",
    remote: bool | str = True,
    tokenization: Tokenization = Tokenization(),
    check: bool = True,
) -> dict[Site, Float[Tensor, "n *shape"]]:
    """Pooled activations of ``texts`` at ``sites`` of the nnsight model ``lm``, computed where it runs (NDIF
    for ``remote=True``), in the order of ``texts`` (float32, on the CPU); ``head`` sites ``(n, heads, head_dim)``.
    ``check=False``: the caller already ran :func:`check_service` (once for many calls)."""
    check_pooling(pooling)
    plan = check_remote_sites(lm, sites)
    if check:
        check_service(lm, remote)
    work = batches(tokenizer, texts, tokenization)
    import nnsight

    nnsight.register(pooling_module)  # the pooling rule travels with the request: NDIF has no xlalign
    with lm.session(remote=remote):
        saved = nnsight.save([])
        for batch in work:
            counted = batch.token_mask
            with lm.trace(**batch.model_inputs(unwrap(lm))):
                for path, side, _ in plan:
                    envoy = lm.get(path)
                    value = envoy.output if side == "output" else envoy.input
                    value = value[0] if isinstance(value, tuple) else value
                    saved.append(pool(value, counted, pooling))
    rows = torch.cat([batch.rows for batch in work])
    per_site = list(zip(*[iter(saved)] * len(plan)))  # one tuple of pooled tensors per batch, in plan order
    heads = n_heads(unwrap(lm))
    result = {}
    dtype = next(unwrap(lm).parameters()).dtype  # pooled vectors come in float32: name the model's dtype
    for index, (_, _, site) in enumerate(plan):  # in forward order: the first non-finite site is named
        checked = [check_finite(values[index], site, dtype=dtype, captured=False) for values in per_site]
        stacked = torch.cat([values.float().cpu() for values in checked])
        if site.component == "head":
            stacked = rearrange(stacked, "n (h d) -> n h d", h=heads)
        result[site] = torch.empty_like(stacked)
        result[site][rows] = stacked
    return result


def check_remote_sites(lm, sites: Sequence[Site]) -> list[tuple[str, str, Site]]:
    """The (envoy path, side, site) plan of ``sites`` in the nnsight model ``lm``; an error for a site it lacks or
    cannot capture remotely."""
    if not is_nnsight(lm):
        raise BackendError(
            f"capture_remote needs an nnsight model (nnsight_model(...) or yours), got {type(lm).__name__}"
        )
    return _plan(lm, check_sites(sites))


def _plan(lm, sites: list[Site]) -> list[tuple[str, str, Site]]:
    """(Envoy path, side, site) of every site, in the order the forward pass produces them."""
    inner = unwrap(lm)
    names = {module: name for name, module in inner.named_modules()}
    last = n_layers(inner)

    def when(site: Site) -> tuple[int, int]:
        if site.layer == 0:
            return (0, 0)
        if site.component == "hidden" and site.layer == last:  # after the final norm
            return (last + 1, 0)
        return (site.layer, 1 + EXECUTION_ORDER.index(site.component))

    for site in sites:
        if isinstance(locate(inner, site), RouterPoint):
            raise BackendError(f"{site}: router sites are not captured remotely (their rule runs in xlalign's hooks)")
    return [(names[module], side, site) for site in sorted(sites, key=when) for module, side in [locate(inner, site)]]


def require_key(remote: bool | str) -> None:
    """For a real NDIF run: the API key from ``NDIF_API_KEY``, set in nnsight's config in memory only."""
    if remote is not True:
        return
    key = os.environ.get("NDIF_API_KEY")
    if not key:
        raise BackendError(
            "NDIF needs an API key: set the environment variable NDIF_API_KEY (see https://login.ndif.us)"
        )
    import nnsight

    nnsight.CONFIG.API.APIKEY = key


def check_service(lm, remote: bool | str) -> None:
    """For a real NDIF run: the API key and the model served, or an error before any work."""
    if remote is not True:
        return
    require_key(remote)
    import nnsight

    repo = str(unwrap(lm).config.name_or_path)
    if not nnsight.is_model_running(repo):
        raise BackendError(
            f"NDIF ({nnsight.CONFIG.API.HOST}) is unreachable or does not serve {repo!r} now; "
            "nnsight.status() lists the models it runs"
        )
