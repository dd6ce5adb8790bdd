"""The layers' dependency rules (docs/architecture.md), read from every import statement, module-level or not.

``probes.errors`` (the root error class) imports nothing and every layer may import it; ``probes.data`` uses the
standard library only; ``probes.model`` may import ``data``; ``probes.capture`` ``model``, ``data`` and the
Activations noun; ``probes.analysis`` never imports ``model`` or ``capture`` (nor any layer above it);
``probes.artifacts`` may import ``data`` and ``model``; ``probes.find`` may import ``analysis`` and ``artifacts``;
``probes.plots`` only pandas and matplotlib; ``steer`` may import ``probes``; nothing outside ``xlalign`` imports
it; no import cycles; no file over 400 lines.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ("probes", "steer", "xlalign")
MAX_LINES = 400
OWN = ("probes", "steer", "xlalign")
# Layer -> the xlalign layers it may import (itself always; third-party packages unless it says otherwise).
MAY_IMPORT = {
    "probes": set(),  # the root package: lazy exports and the version
    "probes.data": {"probes.errors"},
    "probes.choices": set(),  # the names options choose from: a leaf every layer may import
    "probes.errors": set(),  # the root of every xlalign error: a leaf every layer may import
    "probes.model": {"probes.data", "probes.choices", "probes.errors"},
    "probes.capture": {
        "probes.data",
        "probes.model",
        "probes.analysis.activations",
        "probes.__version__",
        "probes.choices",
        "probes.errors",
    },
    "probes.analysis": {"probes.choices", "probes.errors"},
    "probes.artifacts": {"probes.data", "probes.model", "probes.__version__", "probes.errors"},
    "probes.find": {"probes.analysis", "probes.artifacts", "probes.errors"},
    "probes.plots": {"probes.errors"},
    "steer": {"probes"},  # every layer of it
    "xlalign": {"probes", "steer"},
}
THIRD_PARTY = {  # layers restricted in the third-party packages they use
    "probes.data": {"datasets"},  # only the optional Hugging Face reader, imported when it is called
    "probes.plots": {"pandas", "matplotlib"},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, at any depth (``from P import m``: P, and P.m if
    it is one of ``modules``)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.append((node.lineno, base))
            found += [
                (node.lineno, f"{base}.{alias.name}") for alias in node.names if f"{base}.{alias.name}" in modules
            ]
    return found


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest key of MAY_IMPORT it is inside."""
    return max((layer for layer in MAY_IMPORT if module == layer or module.startswith(layer + ".")), key=len)


def inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def allowed(layer: str, target: str) -> bool:
    """Whether a module of ``layer`` may import ``target`` (one of xlalign's own modules)."""
    if target == "probes" or inside(target, layer):  # the root package holds only lazy exports
        return True
    return any(inside(target, other) for other in MAY_IMPORT[layer])


def violations(root: Path) -> list[str]:
    """Every broken rule under ``root`` (which holds the packages), as readable lines."""
    problems = []
    files = [
        path for package in PACKAGES if (root / package).is_dir() for path in sorted((root / package).rglob("*.py"))
    ]
    modules = {module_name(root, path) for path in files}
    graph = defaultdict(set)
    for path in files:
        name = module_name(root, path)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path.relative_to(root)}: {lines} lines (at most {MAX_LINES})")
        layer = layer_of(name)
        for line, target in imports(root, path, modules):
            where = f"{path.relative_to(root)}:{line}: {name} imports {target}"
            top = target.split(".")[0]
            if top in OWN:
                if target in modules:
                    graph[name].add(target)
                if inside(target, "xlalign") and not inside(name, "xlalign"):
                    problems.append(f"{where} (nothing outside xlalign imports it)")
                elif not allowed(layer, target):
                    problems.append(
                        f"{where} (layer {layer} may import {sorted(MAY_IMPORT[layer]) or 'no other layer'})"
                    )
            elif layer in THIRD_PARTY and top not in sys.stdlib_module_names and top not in THIRD_PARTY[layer]:
                problems.append(
                    f"{where} (layer {layer} may use only {sorted(THIRD_PARTY[layer])} beyond the standard library)"
                )
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (a package importing its own submodules
    from ``__init__`` is not a cycle)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):  # a submodule importing its package (its __init__ ran first)
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_keeps_every_rule():
    root = Path(__file__).resolve().parents[1]
    assert violations(root) == []


def test_the_rules_catch_bad_imports_cycles_and_long_files(tmp_path):
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for package in ("probes", "probes/analysis", "probes/model", "probes/data", "steer"):
        write(f"{package}/__init__.py", "")
    write("probes/analysis/bad.py", "def f():\n    from probes.model.sites import Site\n")
    write("probes/model/sites.py", "from probes.model import routing\n")
    write("probes/model/routing.py", "def g():\n    from probes.model.sites import Site\n")
    write("probes/data/long.py", "x = 1\n" * (MAX_LINES + 1) + "import torch\n")
    write("steer/job.py", "import xlalign.cli\n")
    problems = "\n".join(violations(tmp_path))
    assert "probes/analysis/bad.py:2: probes.analysis.bad imports probes.model.sites (layer probes.analysis" in problems
    assert "import cycle: probes.model.sites -> probes.model.routing -> probes.model.sites" in problems
    assert f"probes/data/long.py: {MAX_LINES + 2} lines" in problems
    assert "probes.data.long imports torch (layer probes.data may use only ['datasets']" in problems
    assert "steer.job imports xlalign.cli (nothing outside xlalign imports it)" in problems
    assert len(problems.splitlines()) == 5, problems
