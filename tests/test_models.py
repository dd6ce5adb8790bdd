"""load_model and the tiny random models: seeded, every family has a site table, clear errors, cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from probes.model import (
    ARCHITECTURES,
    LINEAR_COMPONENTS,
    MOE_FAMILIES,
    RANDOM_FAMILIES,
    ModelError,
    Site,
    SiteError,
    arch_table,
    blocks,
    load_model,
    locate,
    model_identity,
    random_model,
    site_shape,
    width,
)


def test_random_models_are_seeded_and_fresh():
    a, tokenizer = load_model("random:gemma3")
    b, _ = random_model("gemma3_text")
    assert a is not b and a.config.model_type == "gemma3_text"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    c, _ = random_model("gemma3_text", seed=1)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert not a.training and len(tokenizer) == a.config.vocab_size


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_every_random_family_has_a_site_table_and_sizes(family):
    model, _ = random_model(family)
    assert family in ARCHITECTURES
    assert width(model, "resid") == 64
    assert width(model, "mlp_act") == width(model, "mlp_gate") == (128 if family != "bloom" else 256)
    assert width(model, "head") == 16
    identity = model_identity(model)
    assert identity["model_type"] == family and identity["n_layers"] == 4


@pytest.mark.parametrize("family", RANDOM_FAMILIES + MOE_FAMILIES)
def test_linear_projection_sites_are_every_linear_module_of_a_block_as_kojima_lists_them(family):
    """The table's linear components are the block's Linear/Conv1D modules outside the experts (DeepSeek's latent
    attention: o_proj only), and a site reads that module's output, as a raw forward hook does."""
    from probes.capture import trace

    model, tokenizer = random_model(family)
    table = arch_table(model)
    block = blocks(model)[0]
    linear = {
        name
        for name, module in block.named_modules()
        if type(module).__name__ in ("Linear", "Conv1D") and "expert" not in name
    }
    if family == "deepseek_v3":
        assert set(table.linear.values()) == {"self_attn.o_proj"} < linear
    elif family in MOE_FAMILIES:
        assert set(table.linear.values()) == {n for n in linear if n.startswith("self_attn.")}
    else:
        assert set(table.linear.values()) == linear
    sites = [Site(1, component) for component in table.linear]
    seen = {}
    hooks = [
        block.get_submodule(path).register_forward_hook(lambda m, a, out, c=c: seen.__setitem__(c, out[0]))
        for c, path in table.linear.items()
    ]
    with torch.no_grad():
        model(**tokenizer("Guten Morgen, wie geht es dir?", return_tensors="pt"))
    for hook in hooks:
        hook.remove()
    recording = trace(model, tokenizer, ["Guten Morgen, wie geht es dir?"], sites)
    for site in sites:
        torch.testing.assert_close(recording.tokens(site)[0], seen[site.component])
        assert site_shape(model, site) == (seen[site.component].shape[-1],)
    missing = next((c for c in LINEAR_COMPONENTS if c not in table.linear), None)
    if missing:
        with pytest.raises(SiteError, match=f"no {missing}; its linear projections"):
            locate(model, Site(1, missing))


def test_site_errors():
    model, _ = random_model("llama")
    with pytest.raises(SiteError, match="4 blocks"):
        locate(model, Site(5, "resid"))
    with pytest.raises(SiteError, match="layer 0 exists only for 'resid'"):
        Site(0, "mlp_act")
    with pytest.raises(SiteError, match="unknown component 'mlp'"):
        Site(1, "mlp")
    with pytest.raises(SiteError, match="'router' does not exist"):
        locate(model, Site(1, "router"))
    assert Site.parse("mlp_gate.12") == Site(12, "mlp_gate")
    model.config.model_type = "mamba"
    with pytest.raises(
        SiteError, match="no site table for architecture 'mamba'.*Supported: bloom.*register_architecture"
    ):
        locate(model, Site(1, "resid"))


def test_bad_model_specs_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no tiny random model for family 'nope'"):
        load_model("random:nope")
    with pytest.raises(ModelError, match="GGUF file .* does not exist"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(tmp_path / "missing"))


def test_importing_probes_is_cheap():
    code = (
        "import probes, steer, xlalign, sys; xlalign.__version__; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves_to_what_it_names():
    """The lazy facades: every exported name loads, and none is shadowed by a submodule of the same name."""
    import types

    import probes
    import probes.analysis
    import steer
    import xlalign

    for package in (xlalign, probes, probes.analysis, steer):
        for name in package.__all__:
            if name in ("__version__", *getattr(package, "_SUBMODULES", {})):
                continue
            value = getattr(package, name)
            assert not isinstance(value, types.ModuleType), f"{package.__name__}.{name} is a module"
    assert (
        xlalign.plots.alignment_per_layer and xlalign.jobs.capture and xlalign.run.__module__ == "xlalign.closed_loop"
    )
