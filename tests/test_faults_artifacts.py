"""Faults of issue #26 (items 3 and 4): non-finite settings refused by every intervention, and artifacts that carry
a SHA-256 over their tensors and metadata, so a flipped bit, a NaN tensor or an edited field is refused on load
instead of steering to NaN logits and empty continuations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import tiny
from probes.analysis import Activations
from probes.artifacts import (
    KINDS,
    ArtifactError,
    Eraser,
    LanguageDetector,
    LinearMap,
    NeuronSet,
    ShiftVector,
    artifact_digest,
    load_artifact,
)
from probes.capture import capture
from probes.data import demo_corpus
from probes.find import fit_shift
from probes.model import Site, model_identity
from steer.convert import to_intervention
from steer.incline import incline
from steer.interventions import AddVector, Ablate, ApplyMap, Erase, HeadShift, InterventionError, SetNeurons
from steer.keeping import diffmean_plan, restore_plan
from steer.patch import Patch
from steer.router import BanExperts, ForceExperts, RouterBias, promote_pivot_experts, steermoe_experts
from xlalign.cli import main

NONFINITE = [math.nan, math.inf, -math.inf]
WIDTH = 64  # the tiny llama's hidden size


def make(kind: str, poison: bool = False):
    """A small artifact of ``kind`` on the tiny llama (``poison``: one NaN in its first float tensor)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    identity = model_identity(tiny("llama")[0])
    nan = torch.tensor(math.nan)
    if kind == "ShiftVector":
        first = rand(WIDTH)
        if poison:
            first[5] = nan
        return ShiftVector({1: first, 3: rand(WIDTH)}, "resid", "eng", "deu", "mean", {"n": 4}, identity, (1,))
    if kind == "LinearMap":
        W = torch.linalg.qr(rand(WIDTH, WIDTH)).Q
        if poison:
            W[2, 3] = nan
        means = [{1: rand(WIDTH), 2: rand(WIDTH)} for _ in range(2)]
        params = {"center": True}
        return LinearMap({1: W, 2: W.clone()}, "resid", "procrustes", "deu", "eng", params, identity, *means, (1,))
    if kind == "Eraser":
        bias = rand(WIDTH)
        if poison:
            bias[0] = nan
        left, right = {1: rand(WIDTH, 2), 2: rand(WIDTH, 2)}, {1: rand(2, WIDTH), 2: rand(2, WIDTH)}
        languages = ("eng", "deu", "jpn")
        return Eraser(left, right, {1: bias, 2: rand(WIDTH)}, "resid", languages, {"pooling": "mean"}, identity, (1,))
    if kind == "NeuronSet":
        on = torch.tensor([0.5, -1.0])
        if poison:
            on[1] = nan
        units = {"eng": torch.tensor([[1, 3], [2, 127]]), "rus": torch.tensor([[4, 0]])}
        values = {"eng": {"on_p50": on, "ap": torch.tensor([0.9, 0.8])}}
        return NeuronSet("mlp_act", units, values, identity, "AP", {"k": 2})
    scale = rand(WIDTH).abs() + 0.5
    if poison:
        scale[7] = math.inf
    languages = ("eng", "deu", "jpn")
    weights = rand(WIDTH), scale, rand(3, WIDTH), rand(3)
    return LanguageDetector(1, "resid", "mean", languages, *weights, {"C": 1.0}, identity)


def parts(path) -> tuple[dict, dict]:
    with safe_open(path, framework="pt") as handle:
        return json.loads(handle.metadata()["xlalign"]), {key: handle.get_tensor(key).clone() for key in handle.keys()}


def rewrite(path, meta: dict, tensors: dict, *, redigest: bool) -> None:
    """Write ``path`` again with ``meta`` and ``tensors``; ``redigest``: with a SHA-256 that matches them."""
    if redigest:
        meta = {**meta, "sha256": artifact_digest(tensors, meta)}
    save_file(tensors, path, metadata={"xlalign": json.dumps(meta)})


def first_float(tensors: dict) -> str:
    return next(name for name in sorted(tensors) if tensors[name].is_floating_point())


# ---- item 3: non-finite settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", NONFINITE)
@pytest.mark.parametrize("kind", ["ShiftVector", "head", "LinearMap", "Eraser", "NeuronSet"])
def test_to_intervention_refuses_a_non_finite_strength(kind, value):
    if kind == "head":
        artifact = ShiftVector({1: torch.ones(4, 16)}, "head", "eng", "deu", "claim", {}, {})
    else:
        artifact = make(kind)
    language = "eng" if kind == "NeuronSet" else None
    assert to_intervention(artifact, strength=0.5, language=language) is not None
    with pytest.raises(InterventionError, match=f"to_intervention: strength={value!r} is not a finite number"):
        to_intervention(artifact, strength=value, language=language)


@pytest.mark.parametrize("value", NONFINITE)
def test_every_intervention_refuses_non_finite_scalars(value):
    vectors = {1: torch.ones(WIDTH)}
    left, right = {1: torch.ones(WIDTH, 1)}, {1: torch.ones(1, WIDTH)}
    cases = [
        (lambda: AddVector(vectors, alpha=value), "AddVector: alpha="),
        (lambda: HeadShift({1: torch.tensor([0])}, {1: torch.ones(1, 16)}, alpha=value), "HeadShift: alpha="),
        (lambda: ApplyMap({1: torch.eye(WIDTH)}, sigma=value), "ApplyMap: sigma="),
        (lambda: Erase(left, right, vectors, strength=value), "Erase: strength="),
        (lambda: RouterBias({1: [0]}, delta=value), "RouterBias: delta="),
        (lambda: ForceExperts({1: [0]}, eps=value), "ForceExperts: eps="),
        (lambda: BanExperts({1: [0]}, eps=value), "BanExperts: eps="),
    ]
    for build, message in cases:
        with pytest.raises(InterventionError, match=message.replace("(", r"\(")):
            build()


def test_every_intervention_refuses_non_finite_tensors():
    nan_vector = torch.ones(WIDTH)
    nan_vector[9] = math.nan
    one = torch.ones(WIDTH)
    cases = [
        (lambda: AddVector({2: nan_vector}), r"AddVector: vectors\[2\] has 1 of 64 values not finite \(nan at index"),
        (lambda: HeadShift({1: torch.tensor([0])}, {1: torch.full((1, 16), math.inf)}), r"HeadShift: vectors\[1\]"),
        (lambda: ApplyMap({1: torch.eye(WIDTH) * math.inf}), r"ApplyMap: maps\[1\]"),
        (lambda: ApplyMap({1: torch.eye(WIDTH)}, source_mean={1: nan_vector}), r"ApplyMap: source_mean\[1\]"),
        (lambda: Erase({1: torch.ones(WIDTH, 1)}, {1: torch.ones(1, WIDTH)}, {1: nan_vector}), r"Erase: bias\[1\]"),
        (lambda: SetNeurons({1: torch.tensor([0, 1])}, {1: one[:2] * -math.inf}), r"SetNeurons: values\[1\]"),
        (lambda: Ablate({1: torch.ones(WIDTH)}, means={1: nan_vector}), r"Ablate: means\[1\]"),
        (lambda: RouterBias({1: [0, 1]}, delta={1: torch.tensor([0.5, math.nan])}), r"RouterBias: delta\[1\]"),
        (lambda: Patch({3: [torch.ones(2, WIDTH), nan_vector[None]]}), r"Patch: values\[3\]\[1\]"),
        (lambda: promote_pivot_experts({1: torch.tensor([0.1, math.nan, 0.3])}, n_experts=1), r"usage\[1\]"),
        (lambda: steermoe_experts({1: torch.tensor([0.1, math.nan])}, n_force=1, n_ban=0, k=1), r"risk\[1\]"),
    ]
    for build, message in cases:
        with pytest.raises(InterventionError, match=message):
            build()


@pytest.mark.parametrize("value", NONFINITE)
def test_incline_and_the_keeping_strengths_refuse_non_finite_values(value):
    model, tokenizer = tiny("llama")
    fitted = make("LinearMap")
    with pytest.raises(InterventionError, match=f"incline: sigma={value!r} is not a finite number.*--strength"):
        incline(model, tokenizer, ["Guten Morgen"], fitted, value)
    shift = ShiftVector({2: torch.ones(WIDTH)}, "resid", "eng", "deu", "diffmean", {"gap_norms": {"2": 3.0}}, {})
    found = {"deu": shift}
    assert diffmean_plan(found, "deu", 2, 0.5).alpha == pytest.approx(1.5)
    for plan in (diffmean_plan, restore_plan):
        with pytest.raises(InterventionError, match=f"scale={value!r} is not a finite number"):
            plan(found, "deu", 2, value)
    unmeasured = ShiftVector({2: torch.ones(WIDTH)}, "resid", "eng", "deu", "diffmean", {"gap_norms": {"2": value}}, {})
    broken = {"deu": unmeasured}
    with pytest.raises(InterventionError, match="AddVector: alpha="):
        diffmean_plan(broken, "deu", 2, 0.5)


@pytest.fixture(scope="module")
def fitted_shift(tmp_path_factory):
    """A shift vector fitted on the tiny llama's activations of a few German and English demo sentences."""
    model, tokenizer = tiny("llama")
    corpus = demo_corpus().subset(["eng", "deu"], 6)
    sites = [Site(layer, "resid") for layer in (1, 2, 3)]
    pairs = {}
    for lang in corpus.languages:
        pooled = capture(model, tokenizer, corpus.texts(lang), sites)
        pairs |= {(site, lang): pooled[site] for site in sites}
    shift = fit_shift(Activations(pairs, model=model_identity(model), pooling="mean"), "deu", pivot="eng")
    return shift.save(tmp_path_factory.mktemp("fitted") / "shift.deu.safetensors")


def steer_cli(path, *options: str) -> int:
    argv = ["steer", "--artifact", str(path), "--model", "random:llama", "--prompt", "Guten Morgen"]
    argv += ["--max-new-tokens", "2", *options]
    try:
        return main(argv)
    except SystemExit as stop:  # an argparse type for --strength exits here, with the same status
        return stop.code


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_steer_refuses_a_non_finite_strength(fitted_shift, value, capsys):
    assert steer_cli(fitted_shift, "--strength=2") == 0
    capsys.readouterr()
    assert steer_cli(fitted_shift, f"--strength={value}") == 2
    err = capsys.readouterr().err
    assert "--strength" in err and value in err, err


def test_cli_steer_refuses_a_damaged_artifact(fitted_shift, tmp_path, capsys):
    damaged = tmp_path / "shift.deu.safetensors"
    damaged.write_bytes(flip_a_bit(fitted_shift.read_bytes()))
    assert steer_cli(damaged) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "changed or damaged after it was written" in err and "xlalign find" in err


# ---- item 4: integrity of artifacts ---------------------------------------------------------------------------


def flip_a_bit(data: bytes) -> bytes:
    """``data`` (a safetensors file) with one bit flipped in the middle of its tensor data: an exponent bit of a
    float32, so the value grows or shrinks by 2**64 and stays finite (as a 3.3e35 that steers to nothing)."""
    start = 8 + int.from_bytes(data[:8], "little")  # 8-byte header length, the JSON header, then the data
    at = start + (len(data) - start) // 2 // 4 * 4 + 3  # the high byte of a 4-byte word (float32: sign, exponent)
    flipped = bytearray(data)
    flipped[at] ^= 0x20
    return bytes(flipped)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_round_trip_loads_bit_for_bit(kind, tmp_path):
    original = make(kind)
    path = original.save(tmp_path / "a.safetensors")
    loaded = load_artifact(path, model=tiny("llama")[0])
    assert type(loaded) is type(original) and loaded.metadata() == json.loads(json.dumps(original.metadata()))
    assert loaded.tensors().keys() == original.tensors().keys()
    for name, tensor in original.tensors().items():
        assert loaded.tensors()[name].dtype == tensor.dtype and torch.equal(loaded.tensors()[name], tensor), name
    again = loaded.save(tmp_path / "b.safetensors")
    assert again.read_bytes() == path.read_bytes()
    meta, _ = parts(path)
    assert meta["format"] == 3 and len(meta["sha256"]) == 64


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_one_bit_flip_in_the_tensor_data_is_refused(kind, tmp_path):
    path = make(kind).save(tmp_path / "a.safetensors")
    _, before = parts(path)
    path.write_bytes(flip_a_bit(path.read_bytes()))
    _, after = parts(path)  # still a readable safetensors file of finite numbers: only the checksum tells
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    assert [name for name in before if not torch.equal(before[name], after[name])] != []
    with pytest.raises(ArtifactError, match="changed or damaged after it was written.*xlalign find") as caught:
        load_artifact(path)
    assert str(path) in str(caught.value)


def test_a_loaded_artifact_keeps_what_was_checked_when_the_file_changes_in_place(tmp_path):
    path = make("ShiftVector").save(tmp_path / "a.safetensors")
    loaded = load_artifact(path)
    kept = {layer: vector.clone() for layer, vector in loaded.vectors.items()}
    path.write_bytes(flip_a_bit(path.read_bytes()))  # the same file (inode), not a new one
    assert all(torch.equal(loaded.vectors[layer], vector) for layer, vector in kept.items())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_saving_a_non_finite_tensor_is_refused(kind, tmp_path):
    poisoned = make(kind, poison=True)
    path = tmp_path / "a.safetensors"
    with pytest.raises(ArtifactError, match="not written: tensor .* values not finite") as caught:
        poisoned.save(path)
    assert str(path) in str(caught.value) and not path.exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_nan_tensor_with_valid_metadata_is_refused(kind, tmp_path):
    path = make(kind).save(tmp_path / "a.safetensors")
    meta, tensors = parts(path)
    name = first_float(tensors)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    rewrite(path, {k: v for k, v in meta.items() if k != "sha256"}, tensors, redigest=True)
    with pytest.raises(ArtifactError, match=f"tensor '{name}' has 1 of .* values not finite") as caught:
        load_artifact(path)
    assert str(path) in str(caught.value)


def edited_language(meta: dict) -> dict:
    if "language" in meta:
        return {**meta, "language": "fra"}
    return {**meta, "languages": [*meta["languages"][:-1], "fra"]}


def fewer_layers(meta: dict) -> dict:
    """The metadata with its last layer (NeuronSet, LanguageDetector: its last language) left out."""
    if "layers" in meta:
        return {**meta, "layers": meta["layers"][:-1]}
    return {**meta, "languages": meta["languages"][:-1]}


@pytest.mark.parametrize("edit", [edited_language, fewer_layers])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_edited_metadata_is_refused(kind, edit, tmp_path):
    path = make(kind).save(tmp_path / "a.safetensors")
    meta, tensors = parts(path)
    rewrite(path, edit(meta), tensors, redigest=False)  # the old SHA-256 stays
    with pytest.raises(ArtifactError, match="changed or damaged after it was written"):
        load_artifact(path)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_metadata_must_describe_the_tensors_even_with_a_valid_checksum(kind, tmp_path):
    path = make(kind).save(tmp_path / "a.safetensors")
    meta, tensors = parts(path)
    rewrite(path, fewer_layers({k: v for k, v in meta.items() if k != "sha256"}), tensors, redigest=True)
    with pytest.raises(ArtifactError, match="metadata.*xlalign find") as caught:
        load_artifact(path)
    assert str(path) in str(caught.value)


def test_a_file_of_the_previous_format_is_refused(tmp_path):
    path = make("ShiftVector").save(tmp_path / "a.safetensors")
    meta, tensors = parts(path)
    rewrite(path, {**{k: v for k, v in meta.items() if k != "sha256"}, "format": 2}, tensors, redigest=False)
    with pytest.raises(ArtifactError, match="in artifact format 2; .* reads format 3: find it again"):
        load_artifact(path)
