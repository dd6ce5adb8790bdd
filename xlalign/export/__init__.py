"""Exports of xlalign steering to inference engines: llama.cpp control vectors (additive vectors only).

``export_control_vector(plan_or_artifacts, path)`` writes a plan's constant residual-stream vectors as a GGUF
control vector that llama.cpp, its server and llama-cpp-python apply; ``import_control_vector(path)``
reads one (also repeng's, llama.cpp's generator's, EasySteer's) into an :class:`~steer.interventions.AddVector`
plan. Layer mapping and refusals: :mod:`xlalign.export.plan`; the file format: :mod:`xlalign.export.gguf_file`;
running llama.cpp from Python: :mod:`xlalign.export.llamacpp`; the CLI: :mod:`xlalign.export.commands`.
"""

from importlib import import_module

_MODULES = {
    "xlalign.export.commands": "add_export_commands run_export_command",
    "xlalign.export.control_vector": "build_control_vector export_control_vector import_control_vector",
    "xlalign.export.gguf_file": "read_control_vector write_control_vector",
    "xlalign.export.plan": "ControlVector ControlVectorError",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xlalign.export' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
