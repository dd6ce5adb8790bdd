"""Shift vectors, head probes and linear maps recover what was planted; their artifacts are strict on load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import activations, tiny
from probes.artifacts import ArtifactError, LinearMap, ShiftVector
from probes.capture import capture_to_store
from probes.data import demo_corpus
from probes.find import (
    HeadProbe,
    fit_incline,
    fit_map,
    fit_shift,
    fit_procrustes,
    fit_shift_vectors,
    logistic_shift,
    mean_shift,
    orthogonality_deviation,
    pca_shift,
)
from probes.model import Site, model_identity


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rotation(d: int, generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# --- linear maps -------------------------------------------------------------------------------------


def test_incline_recovers_a_planted_map_exactly_and_under_noise():
    g = rng(0)
    X = torch.randn(200, 12, generator=g, dtype=torch.float64)
    W_true = torch.randn(12, 12, generator=g, dtype=torch.float64)
    assert torch.allclose(fit_incline(X, X @ W_true), W_true, atol=1e-10)
    noisy = X @ W_true + 1e-3 * torch.randn(200, 12, generator=g, dtype=torch.float64)
    W = fit_incline(X, noisy)
    assert (W - W_true).abs().max() < 1e-3
    # least squares: no other map fits better
    assert torch.linalg.norm(X @ W - noisy) <= torch.linalg.norm(X @ W_true - noisy)


def test_ridge_shrinks_the_map_and_vanishes_in_the_limit():
    g = rng(1)
    X = torch.randn(100, 8, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(100, 8, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(8, 8, generator=g, dtype=torch.float64) + noise
    norms = [torch.linalg.matrix_norm(fit_incline(X, Y, ridge)).item() for ridge in (0.0, 10.0, 100.0, 1000.0)]
    assert norms == sorted(norms, reverse=True) and norms[-1] < 0.5 * norms[0]
    assert torch.allclose(fit_incline(X, Y, ridge=1e-9), fit_incline(X, Y), atol=1e-8)


def test_procrustes_recovers_a_planted_rotation_despite_translation_and_scale():
    g = rng(2)
    d = 10
    R = random_rotation(d, g)
    X = torch.randn(300, d, generator=g, dtype=torch.float64) + 3.0
    offset = torch.randn(d, generator=g, dtype=torch.float64)
    Y = 2.5 * (X - X.mean(0)) @ R + offset  # rotated, rescaled, translated
    W, mean_l, mean_pivot = fit_procrustes(X, Y)
    assert torch.allclose(W, R, atol=1e-8)
    assert torch.allclose(mean_l, X.mean(0)) and torch.allclose(mean_pivot, offset, atol=1e-10)
    # without centring, the translation spoils the fit
    W_raw, zero, _ = fit_procrustes(X, Y, center=False)
    assert (W_raw - R).abs().max() > 0.05 and not zero.any()


def test_orthogonality_deviation_separates_rotations_from_general_maps():
    g = rng(3)
    R = random_rotation(16, g)
    assert orthogonality_deviation(R) < 1e-10
    assert orthogonality_deviation(2.0 * R) == pytest.approx(3.0)  # |s^2 - 1| for a scaled rotation
    assert orthogonality_deviation(torch.randn(16, 16, generator=g, dtype=torch.float64) / 4) > 0.5


def test_linear_maps_refuse_unpaired_rows():
    with pytest.raises(ValueError, match="paired"):
        fit_incline(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="paired"):
        fit_procrustes(torch.randn(5, 3), torch.randn(5, 4))


# --- shift vectors ----------------------------------------------------------------------------------------


def test_mean_shift_equals_numpy_for_vectors_and_heads():
    g = rng(4)
    pivot, other = torch.randn(30, 6, generator=g), torch.randn(20, 6, generator=g) + 1.0
    expected = pivot.numpy().astype(np.float64).mean(0) - other.numpy().astype(np.float64).mean(0)
    np.testing.assert_allclose(mean_shift(pivot, other).numpy(), expected, rtol=1e-6)
    heads_p, heads_o = torch.randn(30, 3, 4, generator=g), torch.randn(20, 3, 4, generator=g)
    vectors = fit_shift_vectors({2: heads_p}, {2: heads_o})
    assert vectors[2].shape == (3, 4)
    expected = heads_p.numpy().mean(0) - heads_o.numpy().mean(0)
    np.testing.assert_allclose(vectors[2].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pca_shift_recovers_the_planted_direction_of_paired_differences():
    g = rng(5)
    d = 12
    u, v = torch.eye(d, dtype=torch.float64)[0], torch.eye(d, dtype=torch.float64)[1]
    other = torch.randn(400, d, generator=g, dtype=torch.float64)
    amounts = 1.0 + 3.0 * torch.randn(400, 1, generator=g, dtype=torch.float64)
    # differences vary strongly along u; a constant offset along v pulls the mean difference away from u
    pivot = other + amounts * u + 1.5 * v + 0.05 * torch.randn(400, d, generator=g, dtype=torch.float64)
    vector = pca_shift(pivot, other)
    assert cosine(vector, u) > 0.95
    assert cosine(mean_shift(pivot, other), u) < 0.7  # so the test tells PCA from the mean
    mean_difference = (pivot - other).mean(0)
    unit = vector / vector.norm()
    assert torch.allclose(vector, (mean_difference @ unit) * unit)  # scaled to the mean difference's projection
    assert cosine(pca_shift(other, pivot), u) < -0.95  # the sign follows the mean difference


def test_logistic_shift_aligns_with_the_planted_separating_direction():
    g = rng(6)
    d = 8
    scales = torch.ones(d, dtype=torch.float64)
    scales[1] = 10.0  # large noise along e1
    delta = torch.zeros(d, dtype=torch.float64)
    delta[0], delta[1] = 1.0, 10.0  # the means differ mostly along the noisy e1
    other = torch.randn(600, d, generator=g, dtype=torch.float64) * scales + 10.0
    pivot = torch.randn(600, d, generator=g, dtype=torch.float64) * scales + 10.0 + delta
    best = delta / scales**2  # the Bayes-optimal separating direction, close to e0
    vector = logistic_shift(pivot, other)
    assert cosine(vector, best) > 0.95  # per-feature standardisation would give about 0.8
    assert cosine(mean_shift(pivot, other), best) < 0.5  # so the test tells logistic from the mean
    assert vector @ (pivot.mean(0) - other.mean(0)) > 0


def test_fit_shift_vectors_checks_its_input():
    with pytest.raises(ValueError, match="unknown shift method"):
        fit_shift_vectors({1: torch.zeros(3, 2)}, {1: torch.zeros(3, 2)}, method="median")
    with pytest.raises(ValueError, match="layers"):
        fit_shift_vectors({1: torch.zeros(3, 2)}, {2: torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="paired"):
        fit_shift_vectors({1: torch.zeros(3, 2)}, {1: torch.zeros(4, 2)}, method="pca")


# --- heads ------------------------------------------------------------------------------------------------


def test_head_probe_ranks_the_planted_head_first():
    g = rng(7)
    heads, head_dim, n = 4, 6, 60
    data = {layer: {lang: torch.randn(n, heads, head_dim, generator=g) for lang in ("eng", "deu")} for layer in (1, 2)}
    data[2]["eng"][:, 3] += 1.5  # only head 3 of layer 2 tells English from German
    identity = {"name": "planted", "n_layers": 4}
    probe = HeadProbe(cv=5).fit(activations(data, "head", model=identity), "deu")
    assert list(probe.ranking_.columns) == ["layer", "head", "log_likelihood", "accuracy", "tied"]
    assert len(probe.ranking_) == 8 and probe.top_heads(1) == [(2, 3)]
    assert probe.ranking_.accuracy.iloc[0] > 0.95 and probe.ranking_.accuracy.iloc[1:].max() < 0.8
    assert probe.ranking_.log_likelihood.is_monotonic_decreasing and not probe.ranking_.tied.any()
    expected = data[2]["eng"].mean(0) - data[2]["deu"].mean(0)
    assert torch.allclose(probe.shifts_[2], expected, atol=1e-6)
    vector = probe.shift_vector(1)
    assert vector.component == "head" and vector.layers == [2] and vector.params["heads"] == [[2, 3]]
    assert vector.model == identity and vector.recommended_layers == (2,)
    assert torch.equal(vector.vectors[2][3], probe.shifts_[2][3]) and not vector.vectors[2][:3].any()


def test_head_ranking_does_not_saturate_and_reports_ties():
    """Two heads both separate perfectly (accuracy 1.0); the clearer one wins whatever the probing order, and
    two heads with the same data are reported as tied."""
    g = rng(8)
    heads, head_dim, n = 4, 6, 60
    data = {layer: {lang: torch.randn(n, heads, head_dim, generator=g) for lang in ("eng", "deu")} for layer in (1, 2)}
    data[1]["eng"][:, 1] += 5.0  # probed first: separable
    data[2]["eng"][:, 3] += 15.0  # probed later: far more separable
    data[2]["eng"][:, 0], data[2]["deu"][:, 0] = data[1]["eng"][:, 0], data[1]["deu"][:, 0]  # a copy of head 1.0
    probe = HeadProbe(cv=5).fit(activations(data, "head", model={"name": "planted"}), "deu")
    ranking = probe.ranking_.set_index(["layer", "head"])
    assert ranking.loc[(1, 1), "accuracy"] == ranking.loc[(2, 3), "accuracy"] == 1.0
    assert probe.top_heads(2) == [(2, 3), (1, 1)]
    assert ranking.loc[(2, 3), "log_likelihood"] > ranking.loc[(1, 1), "log_likelihood"]
    assert ranking.loc[(1, 0), "tied"] and ranking.loc[(2, 0), "tied"] and ranking.tied.sum() == 2
    assert probe.shift_vector(2).params["tied_at_cutoff"] is False


# --- artifacts ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 12)
    sites = [Site(1, "resid"), Site(2, "resid"), Site(2, "head")]
    return capture_to_store(model, tokenizer, corpus, sites, tmp_path_factory.mktemp("s") / "store")


def test_shift_vector_from_store_round_trips_and_loads_onto_its_model(tmp_path, store):
    model, _ = tiny("llama")
    vector = fit_shift(store, "deu", method="pca")
    assert vector.layers == [1, 2] and vector.model == model_identity(model)
    assert vector.recommended_layers == (2,), "the model's middle block (4 // 2)"
    site = Site(2, "resid")
    assert torch.allclose(vector.vectors[2], pca_shift(store.get(site, "eng"), store.get(site, "deu")))
    vector.save(tmp_path / "v.safetensors")
    loaded = ShiftVector.load(tmp_path / "v.safetensors", model=model)
    assert loaded.layers == vector.layers
    assert all(torch.equal(loaded.vectors[k], vector.vectors[k]) for k in vector.layers)
    for name in ("component", "pivot", "language", "method", "params", "model", "recommended_layers"):
        assert getattr(loaded, name) == getattr(vector, name)
    heads = fit_shift(store, "deu", component="head")
    heads.save(tmp_path / "h.safetensors")
    assert ShiftVector.load(tmp_path / "h.safetensors", model=model).vectors[2].shape == (4, 16)
    probe = HeadProbe(cv=3).fit(store, "deu")
    assert probe.model_ == vector.model and len(probe.ranking_) == 4
    assert torch.allclose(probe.shifts_[2], heads.vectors[2])
    probe.shift_vector(2).save(tmp_path / "top.safetensors")
    top = ShiftVector.load(tmp_path / "top.safetensors", model=model)
    assert top.params["heads"] == [list(h) for h in probe.top_heads(2)]


def test_linear_map_from_store_round_trips(tmp_path, store):
    model, _ = tiny("llama")
    for method in ("incline", "procrustes"):
        fitted = fit_map(store, "deu", method=method, layers=[2])
        fitted.save(tmp_path / f"{method}.safetensors")
        loaded = LinearMap.load(tmp_path / f"{method}.safetensors", model=model)
        assert loaded.layers == [2] and torch.equal(loaded.matrices[2], fitted.matrices[2])
        assert loaded.params == fitted.params and loaded.model == fitted.model and loaded.method == method
        x = store.get(Site(2, "resid"), "deu")
        assert torch.allclose(loaded.transform(2, x), fitted.transform(2, x))
    assert set(loaded.mean_source) == {2} and torch.equal(loaded.mean_pivot[2], fitted.mean_pivot[2])
    with pytest.raises(ValueError, match="has no resid layers \\[7\\]"):
        fit_map(store, "deu", layers=[7])


def test_linear_map_transform_moves_held_out_rows_onto_the_pivot():
    g = rng(8)
    R = random_rotation(6, g).float()
    X = torch.randn(50, 6, generator=g)
    W, mean_l, mean_pivot = fit_procrustes(X, X @ R + 2.0)
    linear_map = LinearMap({1: W}, "resid", "procrustes", "deu", "eng", {}, {}, {1: mean_l}, {1: mean_pivot})
    held_out = torch.randn(5, 6, generator=g)
    assert torch.allclose(linear_map.transform(1, held_out), held_out @ R + 2.0, atol=1e-4)


def test_artifacts_refuse_overwrite_other_models_wrong_shapes_and_wrong_kinds(tmp_path):
    llama, _ = tiny("llama")
    qwen, _ = tiny("qwen2")
    identity = model_identity(llama)
    vector = ShiftVector({1: torch.ones(64), 3: torch.zeros(64)}, "resid", "eng", "deu", "mean", {}, identity)
    path = vector.save(tmp_path / "v.safetensors")
    with pytest.raises(ArtifactError, match="exists"):
        vector.save(path)
    vector.save(path, overwrite=True)
    with pytest.raises(ArtifactError, match="model_type: recorded 'llama', model has 'qwen2'"):
        ShiftVector.load(path, model=qwen)
    with pytest.raises(ArtifactError, match="holds a 'ShiftVector', not a 'LinearMap'"):
        LinearMap.load(path)

    narrow = ShiftVector({2: torch.ones(32)}, "resid", "eng", "deu", "mean", {}, identity)
    narrow.save(tmp_path / "narrow.safetensors")
    with pytest.raises(ArtifactError, match=r"vector at resid\.2 has shape \(32,\).* needs \(64,\)"):
        ShiftVector.load(tmp_path / "narrow.safetensors", model=llama)
    assert ShiftVector.load(tmp_path / "narrow.safetensors").vectors[2].shape == (32,)  # without a model: no check

    deep = ShiftVector({9: torch.ones(64)}, "resid", "eng", "deu", "mean", {}, identity)
    deep.save(tmp_path / "deep.safetensors")
    with pytest.raises(ArtifactError, match="4 blocks"):
        ShiftVector.load(tmp_path / "deep.safetensors", model=llama)

    heads = ShiftVector({1: torch.ones(2, 16)}, "head", "eng", "deu", "claim", {}, identity)
    heads.save(tmp_path / "heads.safetensors")
    with pytest.raises(ArtifactError, match=r"\(2, 16\).* needs \(4, 16\)"):
        ShiftVector.load(tmp_path / "heads.safetensors", model=llama)

    small = LinearMap({1: torch.eye(8)}, "mlp_out", "incline", "deu", "eng", {"ridge": 0.0}, identity)
    small.save(tmp_path / "m.safetensors")
    with pytest.raises(ArtifactError, match=r"W at mlp_out\.1 has shape \(8, 8\).* needs \(64, 64\)"):
        LinearMap.load(tmp_path / "m.safetensors", model=llama)


def test_artifact_objects_validate_what_they_hold():
    with pytest.raises(ValueError, match="one shape"):
        ShiftVector({1: torch.ones(4), 2: torch.ones(5)}, "resid", "eng", "deu", "mean", {}, {})
    with pytest.raises(ValueError, match="acts on resid or mlp_out"):
        LinearMap({1: torch.eye(3)}, "head", "incline", "deu", "eng", {}, {})
    with pytest.raises(ValueError, match="square"):
        LinearMap({1: torch.ones(3, 4)}, "resid", "incline", "deu", "eng", {}, {})
    with pytest.raises(ValueError, match="mean_source"):
        LinearMap({1: torch.eye(3)}, "resid", "procrustes", "deu", "eng", {}, {})


def test_an_artifact_of_another_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    header = {
        "kind": "ShiftVector",
        "version": "0.1.0",
        "component": "resid",
        "pivot": "eng",
        "language": "deu",
        "method": "mean",
        "params": {},
        "model": {},
        "layers": [1],
    }  # what xlalign 0.1 wrote: no format
    save_file({"resid.1": torch.ones(4)}, path, metadata={"xlalign": json.dumps(header)})
    with pytest.raises(ArtifactError, match="written by xlalign 0.1.0 in artifact format 1; .* reads format 3"):
        ShiftVector.load(path)
