"""The documentation is true to the code: its runnable code blocks run, its links resolve, the CLI reference lists
every option, README.md stays short, and nothing refers to documents outside the repository.

**Runnable blocks.** A fenced block of README.md or ``docs/*.md`` whose info string is ``python runnable`` is run
here, each block on its own in a fresh namespace, with the embedded model replaced by a tiny random one: every
substitution in :data:`SUBSTITUTIONS` is applied to the block's text first (the spec ``"default"`` becomes
``"random:gemma3_text"``, layer numbers written for Gemma 3 270M's 18 layers become the tiny model's, corpus
sizes shrink). A block that still names ``"default"`` after that is an error, so a new block cannot slip onto the
real model unnoticed. Plain ``python`` blocks and shell blocks are examples and are not run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 10_000  # bytes (wc -c)

TINY = "random:gemma3_text"  # 4 layers, d=64; the embedded model is Gemma 3 270M (18 layers, d=640)
SUBSTITUTIONS = [  # (text as written for the embedded model, text for the tiny model)
    ('"default"', f'"{TINY}"'),
    ("range(19)", "range(5)"),  # every layer, embeddings included
    ("range(1, 19)", "range(1, 5)"),  # every block
    ("xl.Site(9,", "xl.Site(2,"),  # the middle layer
    ("{9:", "{2:"),
    ("layers=[9]", "layers=[2]"),
    ("max_sentences=100", "max_sentences=24"),
    ("max_sentences=32", "max_sentences=16"),
]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(info: str) -> list[tuple[str, str]]:
    """``(file:line, code)`` of every fenced block of the docs whose info string is ``info``."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1).strip() == info:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


def for_tiny_model(code: str) -> str:
    for written, tiny in SUBSTITUTIONS:
        code = code.replace(written, tiny)
    return code


RUNNABLE = blocks("python runnable")


def test_the_readme_and_the_docs_have_runnable_blocks():
    where = {name.split(":")[0] for name, _ in RUNNABLE}
    assert "README.md" in where and len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", [code for _, code in RUNNABLE], ids=[name for name, _ in RUNNABLE])
def test_runnable_block_runs_on_a_tiny_model(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a block writes (out/...) stays out of the checkout
    tiny = for_tiny_model(code)
    assert '"default"' not in tiny and "'default'" not in tiny, "a runnable block would load the embedded model"
    exec(compile(tiny, "<docs block>", "exec"), {"__name__": "__docs__"})


def test_the_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (at most {README_LIMIT})"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(match.group(1)) for match in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.MULTILINE)}


def test_every_relative_link_of_the_docs_resolves():
    problems = []
    for path in DOCS:
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{path.relative_to(ROOT)}: {target}: no heading #{anchor}")
            elif ROOT not in resolved.parents and resolved != ROOT:
                problems.append(f"{path.relative_to(ROOT)}: {target} is outside the repository")
    assert problems == []


def repository_files(*suffixes: str) -> list[Path]:
    """The repository's files (tracked, and new ones git does not ignore) ending in ``suffixes``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if name.endswith(suffixes) and (ROOT / name).is_file()]


# Documents that were never in the repository, and the data directory beside it. The data path may appear where a
# test finds the data (conftest) and in results/, whose recorded commands name the data each result was computed on.
OUTSIDE = re.compile(r"METHODS\.md|METHODS items?\b|DESIGN\.md|\.\./shared")
MAY_NAME_THE_DATA = {"tests/conftest.py"}


def test_nothing_refers_to_files_outside_the_repository():
    problems = []
    for path in repository_files(".py", ".md"):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "tests/test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in OUTSIDE.finditer(line):
                data = match.group(0) == "../shared"
                if data and (relative in MAY_NAME_THE_DATA or relative.startswith("results/")):
                    continue
                problems.append(f"{relative}:{number}: {line.strip()}")
    assert problems == []


def test_the_cli_reference_lists_every_command_and_option():
    from xlalign.cli import build_parser

    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## xlalign (\S+)\n(.*?)(?=^## |\Z)", reference, re.MULTILINE | re.DOTALL))
    common = reference.split("## Common options", 1)[-1].split("\n## ", 1)[0]
    missing = []
    for name, command in build_parser().subcommands.items():
        if name not in sections:
            missing.append(f"xlalign {name}: no section")
            continue
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and f"`{flag}" not in sections[name] + common:
                    missing.append(f"xlalign {name} {flag}")
    assert missing == [], "docs/cli.md lacks these (regenerate its tables from `xlalign COMMAND --help`)"
