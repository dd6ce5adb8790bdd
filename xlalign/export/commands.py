"""``xlalign export control-vector`` and ``xlalign import control-vector``: argument parsing and the two jobs.

xlalign export control-vector out/shift/shift.deu.safetensors --out deu.gguf --strength 4 --layers 9
xlalign import control-vector repeng.gguf                        # what it holds, at which xlalign layers
xlalign import control-vector repeng.gguf --out cv.safetensors   # a ShiftVector for xlalign steer --artifact
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xlalign.arg_types import finite, ints

COMMANDS = ("export", "import")


def add_export_commands(subparsers) -> dict[str, argparse.ArgumentParser]:
    """Add ``export`` and ``import`` to the ``xlalign`` command's subparsers; returns the parsers by name."""
    text = "write xlalign steering as a llama.cpp control vector (additive vectors only)"
    export = subparsers.add_parser("export", help=text, description=text)
    kinds = export.add_subparsers(dest="kind", required=True, metavar="KIND")
    vector = kinds.add_parser(
        "control-vector",
        help="a GGUF control vector for llama.cpp, its server and llama-cpp-python",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vector.add_argument(
        "artifact", nargs="+", type=Path, help="shift vector files (xlalign find shift); summed per layer"
    )
    vector.add_argument("--out", required=True, type=Path, help="the .gguf file to write")
    vector.add_argument("--strength", type=finite, default=1.0, help="alpha, as xlalign steer (default: 1.0)")
    vector.add_argument(
        "--layers",
        type=ints,
        help="where to add, as xlalign steer: resid layers 2..L (default: the artifact's recommended)",
    )
    vector.add_argument("--overwrite", action="store_true", help="replace an existing file")

    text = "read a llama.cpp control vector (xlalign's, repeng's, llama.cpp's cvector-generator's, EasySteer's)"
    imports = subparsers.add_parser("import", help=text, description=text)
    kinds = imports.add_subparsers(dest="kind", required=True, metavar="KIND")
    vector = kinds.add_parser("control-vector", help=text, description=text)
    vector.add_argument("file", type=Path, help="a control-vector .gguf file")
    vector.add_argument("--out", type=Path, help="write it as a ShiftVector artifact (for xlalign steer --artifact)")
    vector.add_argument("--model", default="default", help="the model it steers (recorded in the artifact, checked)")
    vector.add_argument("--language", default="unknown", help="the language it moves away from (a label)")
    vector.add_argument("--pivot", default="unknown", help="the language it moves towards (a label)")
    vector.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    return {"export": export, "import": imports}


def run_export_command(args: argparse.Namespace) -> str:
    """Run a parsed ``export``/``import`` command; returns the line to print (errors are ValueErrors)."""
    from xlalign.export.control_vector import export_control_vector
    from xlalign.export.gguf_file import read_control_vector

    if args.command == "export":
        path = export_control_vector(
            args.artifact, args.out, strength=args.strength, layers=args.layers, overwrite=args.overwrite
        )
        return f"wrote {path}: {summary(read_control_vector(path))}"
    vector = read_control_vector(args.file)
    if args.out is None:
        return f"{args.file}: {summary(vector)}"
    path = save_as_artifact(
        vector,
        args.out,
        model=args.model,
        language=args.language,
        pivot=args.pivot,
        source=args.file,
        overwrite=args.overwrite,
    )
    return f"wrote {path}: {summary(vector)}"


def summary(vector) -> str:
    """Where llama.cpp adds each direction, in both numberings, with its norm."""
    parts = [
        f"direction.{block} -> resid.{block + 1} (norm {float(v.norm()):.4g})"
        for block, v in sorted(vector.directions.items())
    ]
    return f"model hint {vector.model_hint or 'none'}; " + ", ".join(parts)


def save_as_artifact(
    vector,
    out: Path,
    *,
    model="default",
    language: str = "unknown",
    pivot: str = "unknown",
    source: Path | str = "",
    overwrite: bool = False,
) -> Path:
    """Save ``vector`` as a ``resid`` :class:`~probes.artifacts.ShiftVector` made for ``model`` (checked to fit)."""
    from probes.artifacts import ShiftVector
    from probes.model import model_identity, resolve_model
    from xlalign.export.control_vector import check_fits

    network, _ = resolve_model(model)
    check_fits(vector, network, where=str(source))
    plan = vector.plan()[0]
    params = {"source": str(source), "model_hint": vector.model_hint or "", "file_metadata": vector.metadata}
    artifact = ShiftVector(
        dict(plan.vectors),
        "resid",
        pivot,
        language,
        "control-vector",
        params,
        model_identity(network),
        tuple(plan.layers),
    )
    return artifact.save(out, overwrite=overwrite)
