"""Model access: loading, tiny random models, identity, sites, the per-family tables, hooks and MoE routing."""

from probes.model.access import edit_site, read_site
from probes.model.architectures import (
    ARCHITECTURES,
    ArchTable,
    RouterPoint,
    RouterTap,
    Tap,
    arch_table,
    blocks,
    decoder,
    final_norm,
    locate,
    model_type,
    n_heads,
    n_layers,
    register_architecture,
    router_layers,
    site_shape,
    unwrap,
    width,
)
from probes.model.backend import (
    BACKENDS,
    BACKENDS_BY_NAME,
    Backend,
    backend_names,
    backend_of,
    register_backend,
    unregister_backend,
)
from probes.model.envoys import hosted_model, is_nnsight, nnsight_model
from probes.model.hooks import HookSet, StopForward
from probes.model.identity import identity_mismatches, model_identity
from probes.model.loading import DEFAULT_MODEL_NAME, cache_dir, has_lm_head, load_model, resolve_model
from probes.model.options import Loading
from probes.model.moe import ROUTER_CHANNELS, RULES, Routing
from probes.model.sites import COMPONENTS, LINEAR_COMPONENTS, BackendError, Site, SiteError
from probes.model.tiny import MOE_FAMILIES, RANDOM_FAMILIES, ModelError, demo_tokenizer, random_model
from probes.model.tl import BRIDGE_HOOKS, hook_point, is_bridged, transformer_bridge
from probes.model.validation import validate_architecture

__all__ = [
    "ARCHITECTURES",
    "ArchTable",
    "BACKENDS",
    "BACKENDS_BY_NAME",
    "Backend",
    "BRIDGE_HOOKS",
    "BackendError",
    "COMPONENTS",
    "DEFAULT_MODEL_NAME",
    "HookSet",
    "LINEAR_COMPONENTS",
    "Loading",
    "MOE_FAMILIES",
    "ModelError",
    "RANDOM_FAMILIES",
    "ROUTER_CHANNELS",
    "RULES",
    "RouterPoint",
    "RouterTap",
    "Routing",
    "Site",
    "SiteError",
    "StopForward",
    "Tap",
    "arch_table",
    "backend_names",
    "backend_of",
    "blocks",
    "cache_dir",
    "decoder",
    "demo_tokenizer",
    "edit_site",
    "final_norm",
    "has_lm_head",
    "hook_point",
    "hosted_model",
    "identity_mismatches",
    "is_bridged",
    "is_nnsight",
    "load_model",
    "locate",
    "model_identity",
    "model_type",
    "n_heads",
    "n_layers",
    "nnsight_model",
    "random_model",
    "read_site",
    "register_architecture",
    "register_backend",
    "resolve_model",
    "router_layers",
    "site_shape",
    "transformer_bridge",
    "unregister_backend",
    "unwrap",
    "validate_architecture",
    "width",
]
