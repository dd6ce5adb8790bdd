"""load_model and the tiny random models: seeded, every family has a site table, clear errors, cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from probes.model import (
    ARCHITECTURES, RANDOM_FAMILIES, ModelError, Site, SiteError, load_model, locate, model_identity, random_model, width,
)  # fmt: skip


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
    with pytest.raises(SiteError, match="no site table for architecture 'mamba'.*Supported: bloom.*register_architecture"):
        locate(model, Site(1, "resid"))


def test_bad_model_specs_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no tiny random model for family 'nope'"):
        load_model("random:nope")
    with pytest.raises(ModelError, match="GGUF file .* does not exist"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(tmp_path / "missing"))


def test_importing_probes_is_cheap():
    code = ("import probes, steer, xlalign, sys; xlalign.__version__; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
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
    assert xlalign.plots.alignment_per_layer and xlalign.jobs.capture and xlalign.run.__module__ == "xlalign.closed_loop"
