"""One root for every xlalign error (:class:`probes.errors.XlalignError`): every error class of the library
subclasses it, the library raises no bare ``ValueError``, and the command line prints an xlalign error as one
line (exit status 2) while any other exception keeps its traceback and asks to be reported."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from probes.errors import XlalignError
from xlalign.cli import BUG, main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "steer", "xlalign")
SMALL = ["--model", "random:llama", "--corpus", "demo", "--langs", "eng,deu", "--max-sentences", "4", "--no-progress"]

# Exceptions of the library that are not errors of the user's input, and why.
NOT_ERRORS = {
    "probes.model.hooks.StopForward": "control flow: ends a forward pass after the last needed layer; caught inside",
    "probes.capture.shards.ShardDamage": "internal: the store turns it into a StoreError, `check` into a report",
    "xlalign.cli._Damaged": "the result of `xlalign check` that found damage (exit status 1), not an input error",
}
# `raise ValueError` left in the library (a bug inside xlalign, not a user's input), as "path:line": why. None now.
PLAIN_VALUE_ERRORS: dict[str, str] = {}


def library_modules():
    for root in PACKAGES:
        package = importlib.import_module(root)
        yield package
        for info in pkgutil.walk_packages(package.__path__, root + "."):
            yield importlib.import_module(info.name)


def test_every_exception_class_of_the_library_is_an_xlalign_error():
    found, outside = [], []
    for module in library_modules():
        for name, cls in vars(module).items():
            if not (inspect.isclass(cls) and cls.__module__ == module.__name__ and issubclass(cls, BaseException)):
                continue
            if issubclass(cls, Warning):  # notices (xlalign.errors.Notice) are not errors
                continue
            found.append(name)
            if not issubclass(cls, XlalignError) and f"{module.__name__}.{name}" not in NOT_ERRORS:
                outside.append(f"{module.__name__}.{name}")
    assert outside == [], f"subclass probes.errors.XlalignError (or list the class in NOT_ERRORS with why): {outside}"
    for name in ("CorpusError", "SiteError", "StoreError", "JobError", "RoutingError", "FinderError", "FigureError"):
        assert name in found  # the walk reached every layer
    assert issubclass(XlalignError, ValueError)  # `except ValueError` keeps catching every xlalign error


def plain_value_errors(root: Path = ROOT) -> list[str]:
    """Every ``raise ValueError`` / ``raise ValueError(...)`` of the packages under ``root``, as ``path:line``."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    if isinstance(raised, ast.Name) and raised.id == "ValueError":
                        found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_library_raises_its_own_errors_not_plain_value_errors(tmp_path):
    assert sorted(set(plain_value_errors()) - set(PLAIN_VALUE_ERRORS)) == []
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "bad.py").write_text("def f(x):\n    if x:\n        raise ValueError('no')\n")
    assert plain_value_errors(tmp_path) == ["probes/bad.py:3"]  # the scan sees one


def failing_job(error: BaseException):
    def job(*args, **kwargs):
        raise error

    return job


NEW_ERRORS = [
    "probes.find.errors.FinderError",
    "steer.errors.EvaluationError",
    "probes.analysis.routing.RoutingError",
    "probes.plots.style.FigureError",
    "probes.capture.pooling.PoolingError",
    "xlalign.errors.JobError",
]


@pytest.mark.parametrize("error", NEW_ERRORS)
def test_an_xlalign_error_is_one_line_with_exit_status_2(error, tmp_path, capsys, monkeypatch):
    import xlalign.jobs

    module, _, name = error.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(xlalign.jobs, "capture", failing_job(cls("what is wrong, where, what to do")))
    argv = ["capture", *SMALL, "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "xlalign capture: error: what is wrong, where, what to do\n"
    with pytest.raises(cls):  # --debug shows the traceback
        main(["--debug", *argv])


@pytest.mark.parametrize("error", [KeyError("site"), ValueError("from a bug, not the user"), RuntimeError("oops")])
def test_any_other_exception_keeps_its_traceback_and_asks_to_be_reported(error, tmp_path, capsys, monkeypatch):
    import xlalign.jobs

    monkeypatch.setattr(xlalign.jobs, "capture", failing_job(error))
    with pytest.raises(type(error)):
        main(["capture", *SMALL, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert err == f"xlalign capture: {BUG}\n"
    assert "bug in xlalign" in BUG and "please report it with the command line and this traceback" in BUG


CRASHING = """
import sys
import xlalign.jobs
from xlalign.cli import main

def capture(*args, **kwargs):
    raise KeyError("a bug")

xlalign.jobs.capture = capture
sys.exit(main(sys.argv[1:]))
"""


def test_the_command_exits_non_zero_with_the_traceback_of_a_bug(tmp_path):
    argv = ["capture", *SMALL, "--out", str(tmp_path / "s")]
    done = subprocess.run([sys.executable, "-c", CRASHING, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.startswith(f"xlalign capture: {BUG}\nTraceback (most recent call last):"), done.stderr
    assert "KeyError: 'a bug'" in done.stderr
