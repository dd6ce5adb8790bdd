"""llama.cpp control vectors without llama.cpp: the layer mapping, the file format, round trips, a file written in
repeng's convention, every refusal (and that nothing is written then), and the export/import commands."""

from __future__ import annotations

import argparse

import gguf
import numpy as np
import pytest
import torch

from probes.artifacts import Eraser, LanguageDetector, LinearMap, NeuronSet, ShiftVector, load_artifact
from probes.capture import record
from probes.model import Site, model_identity, n_layers
from steer import (
    Ablate,
    AddVector,
    ApplyMap,
    BanExperts,
    Erase,
    ForceExperts,
    HeadShift,
    Patch,
    RouterBias,
    Schedule,
    SetNeurons,
    ZeroNeurons,
    steer,
)
from steer.schedule import gated
from tests.conftest import tiny
from xlalign.export import (
    ControlVectorError,
    add_export_commands,
    build_control_vector,
    export_control_vector,
    import_control_vector,
    read_control_vector,
    run_export_command,
    write_control_vector,
)

D = 64  # the tiny llama's width


def vector(seed: int, width: int = D) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


def file_tensors(path) -> dict[str, np.ndarray]:
    """The tensors of a GGUF file as llama.cpp sees them (names, raw float32 values), read by gguf itself."""
    reader = gguf.GGUFReader(path)
    return {tensor.name: np.array(tensor.data) for tensor in reader.tensors}


def leftovers(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_resid_i_is_written_as_direction_i_minus_1_with_the_model_hint(tmp_path):
    model, _ = tiny("llama")
    last = n_layers(model)
    plan = [AddVector({2: vector(0), last: vector(1)}, 1.0)]
    path = export_control_vector(plan, tmp_path / "cv.gguf", model=model)
    tensors = file_tensors(path)
    assert sorted(tensors) == ["direction.1", f"direction.{last - 1}"]
    assert np.array_equal(tensors["direction.1"], vector(0).numpy())
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    assert "resid.N+1" in reader.fields["xlalign.convention"].contents()


def test_round_trip_gives_the_same_plan_bitwise(tmp_path):
    vectors = {layer: vector(layer) for layer in (2, 3, 5)}
    path = export_control_vector([AddVector(vectors)], tmp_path / "cv.gguf")
    (back,) = import_control_vector(path)
    assert back.layers == (2, 3, 5) and back.alpha == 1.0 and back.component == "resid"
    assert all(torch.equal(back.vectors[layer], vectors[layer]) for layer in vectors)
    again = export_control_vector(import_control_vector(path), tmp_path / "again.gguf")
    first, second = file_tensors(path), file_tensors(again)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_items_at_one_layer_are_summed_with_their_strengths(tmp_path):
    plan = [AddVector({4: vector(0)}, 2.0), (AddVector({4: vector(1), 6: vector(2)}, -0.5), Schedule())]
    (back,) = import_control_vector(export_control_vector(plan, tmp_path / "cv.gguf"))
    assert back.layers == (4, 6)
    torch.testing.assert_close(back.vectors[4], 2.0 * vector(0) - 0.5 * vector(1), rtol=0, atol=1e-6)
    assert torch.equal(back.vectors[6], -0.5 * vector(2))


def test_the_imported_plan_steers_as_the_exported_one(tmp_path):
    model, tokenizer = tiny("llama")
    plan = [AddVector({2: vector(0)}, 3.0), AddVector({3: vector(1)}, -1.0)]
    imported = import_control_vector(export_control_vector(plan, tmp_path / "cv.gguf"), model=model)
    sites = [Site(layer, "resid") for layer in range(1, 5)]
    outputs = []
    for steering in (plan, imported):
        with steer(model, steering), record(model, sites) as seen:
            model(**tokenizer(["The cat sleeps."], return_tensors="pt"))
        outputs.append([seen.tokens(site)[0] for site in sites])
    for before, after in zip(*outputs):
        torch.testing.assert_close(before, after, rtol=0, atol=1e-5)


def repeng_file(path, directions: dict[int, np.ndarray], model_type: str = "llama"):
    """A control vector written as repeng's ``ControlVector.export_gguf`` writes one (its documented format:
    ``general.architecture`` controlvector, ``controlvector.model_hint`` = the HF model_type, a uint32
    ``controlvector.layer_count``, ``direction.{layer}`` keyed by the index into ``model.layers``)."""
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", model_type)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_repeng_file_imports_at_the_output_of_the_block_it_names(tmp_path):
    # repeng keys a direction by the block index i into model.layers and adds it to that block's output
    # (hidden_states[i + 1]); llama.cpp adds direction.i after block i: both are xlalign's resid.i+1.
    model, _ = tiny("llama")
    last = n_layers(model)
    directions = {i: vector(i).numpy() for i in range(last - 1, 0, -1)}  # repeng's default: every block but 0
    path = repeng_file(tmp_path / "repeng.gguf", directions)
    (plan,) = import_control_vector(path, model=model, scale=0.5)
    assert plan.layers == tuple(range(2, last + 1))
    assert all(torch.equal(plan.vectors[i + 1], torch.from_numpy(directions[i])) for i in directions)
    assert plan.alpha == 0.5
    assert read_control_vector(path).model_hint == "llama"


@pytest.mark.parametrize(
    "name, expected",
    [("direction.0", "direction.0"), ("layer.3", "not direction.N"), ("direction.x", "not direction.N")],
)
def test_files_llama_cpp_refuses_are_refused(tmp_path, name, expected):
    writer = gguf.GGUFWriter(tmp_path / "bad.gguf", "controlvector")
    writer.add_tensor(name, vector(0).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ControlVectorError, match=expected):
        import_control_vector(tmp_path / "bad.gguf")


def test_a_direction_past_the_last_block_or_of_another_width_is_refused_for_a_model(tmp_path):
    model, _ = tiny("llama")
    past = repeng_file(tmp_path / "past.gguf", {n_layers(model): vector(0).numpy()})
    with pytest.raises(ControlVectorError, match="past the model's last block"):
        import_control_vector(past, model=model)
    wide = repeng_file(tmp_path / "wide.gguf", {2: vector(0, D + 1).numpy()})
    with pytest.raises(ControlVectorError, match="residual stream has 64"):
        import_control_vector(wide, model=model)
    model_file = tmp_path / "model.gguf"
    gguf.GGUFWriter(model_file, "llama").close()
    with pytest.raises(ControlVectorError):
        import_control_vector(model_file)


def _shift(component="resid", layers=(2, 3), recommended=(3,), width=(D,)):
    model, _ = tiny("llama")
    vectors = {layer: torch.ones(width) * layer for layer in layers}
    return ShiftVector(vectors, component, "eng", "deu", "mean", {}, model_identity(model), recommended)


def _identity():
    return model_identity(tiny("llama")[0])


def _eraser(component="resid"):
    return Eraser(
        {2: torch.zeros(D, 1)}, {2: torch.zeros(1, D)}, {2: torch.zeros(D)}, component, ("deu", "eng"), {}, _identity()
    )


EYE = {2: torch.eye(D)}
ZERO = {2: torch.zeros(D)}
# name -> (the item, built when the test runs; what the error must say)
REFUSALS = {
    "incline map": (lambda: LinearMap(EYE, "mlp_out", "incline", "deu", "eng", {}, _identity()), "INCLINE map"),
    "procrustes map": (
        lambda: LinearMap(EYE, "resid", "procrustes", "deu", "eng", {}, _identity(), ZERO, ZERO),
        "transforms each",
    ),
    "eraser": (_eraser, "LEACE eraser"),
    "neurons": (
        lambda: NeuronSet("mlp_gate", {"deu": torch.tensor([[2, 5]])}, model=_identity(), method="LAPE"),
        "NeuronSet",
    ),
    "detector": (
        lambda: LanguageDetector(
            3,
            "resid",
            "mean",
            ("deu", "eng"),
            torch.zeros(D),
            torch.ones(D),
            torch.zeros(2, D),
            torch.zeros(2),
            {},
            _identity(),
        ),
        "language detector",
    ),
    "head shift": (lambda: _shift("head", width=(4, 16)), "edits attention heads"),
    "embeddings": (lambda: AddVector({0: vector(0)}), "layer 0 is the embeddings"),
    "block 0": (lambda: AddVector({1: vector(0)}), "layer 1 is block 0's output"),
    "mlp_out": (lambda: AddVector({3: vector(0)}, component="mlp_out"), "adds to 'mlp_out'"),
    "attn_out": (lambda: AddVector({3: vector(0)}, component="attn_out"), "adds to 'attn_out'"),
    "ablate": (lambda: Ablate({3: vector(0)}), "directional ablation"),
    "erase": (lambda: Erase({2: torch.zeros(D, 1)}, {2: torch.zeros(1, D)}, ZERO), "LEACE erasure"),
    "map": (lambda: ApplyMap(EYE), "linear map"),
    "set neurons": (lambda: SetNeurons({2: torch.tensor([1])}, {2: torch.tensor([0.5])}), "sets MLP neurons"),
    "zero neurons": (lambda: ZeroNeurons({2: torch.tensor([1])}), "zeroes MLP neurons"),
    "heads": (lambda: HeadShift({2: torch.tensor([0])}, {2: torch.zeros(1, 16)}), "attention heads"),
    "patch (INCLINE)": (lambda: Patch({2: [torch.zeros(3, D)]}), "position-dependent"),
    "router bias": (lambda: RouterBias({1: [0]}, 1.0), "router"),
    "force experts": (lambda: ForceExperts({1: [0]}), "router"),
    "ban experts": (lambda: BanExperts({1: [0]}), "router"),
    "gated": (lambda: (AddVector({3: vector(0)}), gated(["deu"])), "gated on languages"),
    "last token": (lambda: (AddVector({3: vector(0)}), Schedule(prefill="last")), "not every token"),
    "prompt only": (lambda: (AddVector({3: vector(0)}), Schedule(decode="none")), "not every token"),
    "first steps": (lambda: (AddVector({3: vector(0)}), Schedule(decode=4)), "not every token"),
    "span": (lambda: (AddVector({3: vector(0)}), Schedule(prefill=(-2, None))), "not every token"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_non_exportable_item_is_refused_and_nothing_is_written(tmp_path, name):
    make, reason = REFUSALS[name]
    item, good = make(), AddVector({3: vector(1)})
    out = tmp_path / "cv.gguf"
    with pytest.raises(ControlVectorError, match=reason) as error:
        export_control_vector([good, item], out)
    message = str(error.value)
    assert "nothing was written" in message and ("plan item 1" in message or "artifact" in message)
    assert leftovers(tmp_path) == []
    out.write_bytes(b"kept")
    with pytest.raises(ControlVectorError):
        export_control_vector([good, item], out, overwrite=True)
    assert out.read_bytes() == b"kept" and leftovers(tmp_path) == ["cv.gguf"]


def test_the_last_hidden_state_is_after_the_final_norm_and_refused():
    model, _ = tiny("llama")
    last = n_layers(model)
    assert build_control_vector([AddVector({last - 1: vector(0)}, component="hidden")], model=model).layers == [
        last - 1
    ]
    with pytest.raises(ControlVectorError, match="after the final norm"):
        build_control_vector([AddVector({last: vector(0)}, component="hidden")], model=model)


def test_layers_past_the_model_and_mixed_widths_are_refused():
    model, _ = tiny("llama")
    with pytest.raises(ControlVectorError, match="does not exist"):
        build_control_vector([AddVector({n_layers(model) + 1: vector(0)})], model=model)
    with pytest.raises(ControlVectorError, match="shapes"):
        build_control_vector([AddVector({2: vector(0)}), AddVector({3: vector(0, D + 1)})])
    with pytest.raises(ControlVectorError, match=r"residual stream is \(64,\)"):
        build_control_vector([AddVector({2: vector(0, D + 1)})], model=model)


def test_artifacts_of_different_models_are_refused():
    other = ShiftVector(
        {3: torch.ones(D)},
        "resid",
        "eng",
        "deu",
        "mean",
        {},
        {**model_identity(tiny("llama")[0]), "model_type": "qwen2"},
        (3,),
    )
    with pytest.raises(ControlVectorError, match="different models"):
        build_control_vector([_shift(), other])


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    from xlalign.export import ControlVector

    broken = ControlVector({1: vector(0), 2: torch.full((D,), float("nan"))})  # fails after direction.1 is added
    with pytest.raises(ControlVectorError, match="direction.2 is not finite"):
        write_control_vector(broken, tmp_path / "cv.gguf")
    assert leftovers(tmp_path) == []


def test_artifacts_export_as_xlalign_steer_applies_them(tmp_path):
    shift = _shift(layers=(2, 3, 4), recommended=(3,))
    default = build_control_vector([shift])
    assert default.layers == [3] and torch.equal(default.directions[2], shift.vectors[3])
    chosen = build_control_vector([shift, shift], strength=2.0, layers=[2, 4])
    assert chosen.layers == [2, 4] and torch.equal(chosen.directions[3], 4.0 * shift.vectors[4])
    assert chosen.model_hint == "llama"
    with pytest.raises(ControlVectorError, match="strength and layers apply to artifacts"):
        build_control_vector([AddVector({2: vector(0)})], strength=2.0)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="xlalign")
    add_export_commands(main.add_subparsers(dest="command", required=True))
    return main


def test_the_export_and_import_commands(tmp_path):
    shift = _shift(layers=(2, 3, 4), recommended=(3,))
    artifact = shift.save(tmp_path / "shift.safetensors")
    out = tmp_path / "cv.gguf"
    args = parser().parse_args(
        ["export", "control-vector", str(artifact), "--out", str(out), "--strength", "2", "--layers", "2,4"]
    )
    assert "direction.1 -> resid.2" in run_export_command(args)
    assert torch.equal(read_control_vector(out).directions[3], 2.0 * shift.vectors[4])
    with pytest.raises(ControlVectorError, match="exists"):
        run_export_command(args)
    shown = run_export_command(parser().parse_args(["import", "control-vector", str(out)]))
    assert "direction.3 -> resid.4" in shown and "model hint llama" in shown
    saved = tmp_path / "imported.safetensors"
    run_export_command(
        parser().parse_args(
            [
                "import",
                "control-vector",
                str(out),
                "--out",
                str(saved),
                "--model",
                "random:llama",
                "--language",
                "deu",
                "--pivot",
                "eng",
            ]
        )
    )
    model, _ = tiny("llama")
    back = load_artifact(saved, model=model)
    assert back.layers == [2, 4] and torch.equal(back.vectors[4], 2.0 * shift.vectors[4])
    again = export_control_vector([back], tmp_path / "again.gguf")
    assert file_tensors(again).keys() == file_tensors(out).keys()


def test_write_refuses_an_empty_vector(tmp_path):
    from xlalign.export import ControlVector

    with pytest.raises(ControlVectorError, match="at least one direction"):
        write_control_vector(ControlVector({}), tmp_path / "cv.gguf")
    assert leftovers(tmp_path) == []
