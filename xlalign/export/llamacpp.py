"""llama.cpp from Python: convert a transformers checkpoint to GGUF with llama.cpp's own converter, and steer a
``llama_cpp.Llama`` with a control-vector file.

llama-cpp-python is built from its source distribution, which vendors llama.cpp; its wheel holds only the
``llama_cpp`` package, so ``convert_hf_to_gguf.py`` (with its ``conversion`` package and ``gguf-py``) is taken
from that source distribution: ``$XLALIGN_LLAMA_CPP`` (a llama.cpp checkout or a ``llama_cpp_python-*.tar.gz``),
else ``llama_cpp_python-VERSION.tar.gz`` of the installed version in ``<venv>/src`` or xlalign's cache dir,
unpacked once into the cache dir.

``Llama`` takes no control vector; :func:`apply_control_vector` hands one to the context through
``llama_set_adapter_cvec``, laid out as llama.cpp's loader (``common_control_vector_load``) lays it out.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from probes.data.files import atomic_path
from xlalign.export.gguf_file import read_control_vector
from xlalign.export.plan import ControlVector, ControlVectorError

CONVERTER = "convert_hf_to_gguf.py"
_NEEDED = (CONVERTER, "conversion/", "gguf-py/")


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ControlVectorError(
            "llama-cpp-python is not installed: pip install llama-cpp-python (it builds llama.cpp from source)"
        ) from None


def llama_cpp_source() -> Path:
    """The directory holding llama.cpp's ``convert_hf_to_gguf.py`` (unpacked from the sdist on first use)."""
    from probes.model.loading import cache_dir

    given = os.environ.get("XLALIGN_LLAMA_CPP")
    if given and Path(given).is_dir():
        if not (Path(given) / CONVERTER).is_file():
            raise ControlVectorError(f"$XLALIGN_LLAMA_CPP={given} has no {CONVERTER}; point it at a llama.cpp checkout")
        return Path(given)
    version = _installed_version() if not given else Path(given).name.removesuffix(".tar.gz").rpartition("-")[2]
    target = cache_dir() / f"llama.cpp-{version}"
    if (target / CONVERTER).is_file():
        return target
    name = f"llama_cpp_python-{version}.tar.gz"
    candidates = [Path(given)] if given else [Path(sys.prefix) / "src" / name, cache_dir() / name]
    archive = next((path for path in candidates if path.is_file()), None)
    if archive is None:
        raise ControlVectorError(
            f"llama.cpp's {CONVERTER} comes with llama-cpp-python's source distribution, not its wheel; none found "
            f"at {', '.join(map(str, candidates))}. Run: pip download --no-deps --no-binary :all: "
            f"llama-cpp-python=={version} -d {candidates[0].parent} (or set $XLALIGN_LLAMA_CPP to a llama.cpp checkout)"
        )
    _unpack(archive, target)
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Unpack the converter's files of ``archive`` into ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as scratch, tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            inner = member.name.partition("/vendor/llama.cpp/")[2]
            if inner and inner.startswith(_NEEDED) and (member.isfile() or member.isdir()):
                member.name = inner
                members.append(member)
        if not any(member.name == CONVERTER for member in members):
            raise ControlVectorError(f"{archive} holds no vendor/llama.cpp/{CONVERTER}")
        tar.extractall(scratch, members=members, filter="data")
        try:
            os.rename(scratch, target)
            os.mkdir(scratch)  # for TemporaryDirectory's cleanup
        except OSError:
            if not (target / CONVERTER).is_file():  # not a concurrent unpacking that won the race
                raise


def convert_to_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f32") -> Path:
    """Convert a transformers checkpoint directory (``"default"``: the embedded model's dequantised cache) to GGUF
    with llama.cpp's converter, atomically."""
    if str(model_dir) == "default":
        from probes.model.loading import default_model_dir

        model_dir = default_model_dir()
    source = llama_cpp_source()
    out = Path(out)
    with atomic_path(out) as temporary:
        done = subprocess.run(
            [
                sys.executable,
                str(source / CONVERTER),
                str(model_dir),
                "--outfile",
                str(temporary),
                "--outtype",
                outtype,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ControlVectorError(f"{CONVERTER} {model_dir} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return out


def apply_control_vector(
    llm, vector: ControlVector | str | os.PathLike, *, scale: float = 1.0, layer_range: tuple[int, int] | None = None
) -> None:
    """Steer ``llm`` (a ``llama_cpp.Llama``) with a control vector as ``llama-cli --control-vector-scaled FILE
    SCALE`` does: ``direction.N`` (N >= 1) goes to buffer row ``N-1``, which llama.cpp adds after block ``N``
    (0-based); any previous vector of ``llm`` is replaced.
    ``layer_range``: ``--control-vector-layer-range`` (default every block)."""
    import llama_cpp

    if not isinstance(vector, ControlVector):
        vector = read_control_vector(vector)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    # every block's row, zeros included: llama.cpp overwrites only the rows it is given and keeps the previous
    # vector's values in the others (harmless in llama-cli, which sets one vector per context; not here)
    data = np.zeros((n_layer - 1, n_embd), dtype=np.float32)
    for block, direction in vector.directions.items():
        if direction.numel() != n_embd or block >= n_layer:
            raise ControlVectorError(
                f"direction.{block} ({direction.numel()} values) does not fit a model of "
                f"{n_layer} blocks of width {n_embd}"
            )
        data[block - 1] += scale * direction.numpy()
    start, end = layer_range or (1, n_layer)
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if llama_cpp.llama_set_adapter_cvec(llm.ctx, pointer, data.size, n_embd, start, end) != 0:
        raise ControlVectorError("llama_set_adapter_cvec refused the control vector")
    llm.reset()  # a prompt cached under another control vector must not be reused


def clear_control_vector(llm) -> None:
    """Stop steering ``llm`` (llama.cpp keeps the buffer allocated)."""
    import llama_cpp

    llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, llm.n_embd(), -1, -1)
    llm.reset()
