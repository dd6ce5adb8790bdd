"""Execute notebooks in a Jupyter kernel: the test suite's runner and ``make notebooks``.

``python -m notebooks.run [--out out/notebooks] [NOTEBOOK ...]`` executes every ``notebooks/*.py`` (jupytext percent
format; the paired ``.ipynb`` is generated, never committed) on the model ``XLALIGN_MODEL`` names (default: the
embedded one) and writes the executed ``.ipynb`` and an HTML page of each into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parent
TIMEOUT = 1800  # seconds per cell


def notebooks() -> list[Path]:
    return sorted(path for path in FOLDER.glob("[0-9][0-9]_*.py"))


def execute(path: Path, *, extra: str | None = None, cwd: Path | None = None) -> nbformat.NotebookNode:
    """``path`` executed top to bottom in a fresh ``python3`` kernel (``extra``: one more cell run at the end)."""
    notebook = jupytext.read(path)
    if extra is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(extra))
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=TIMEOUT, resources={"metadata": {"path": str(cwd or path.parent)}}
    )
    client.execute()
    return notebook


def main() -> None:
    from nbconvert import HTMLExporter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: every one)")
    parser.add_argument("--out", type=Path, default=Path("out/notebooks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.paths or notebooks():
        print(f"running {path.name}", flush=True)
        executed = execute(path)
        stem = args.out / path.stem
        nbformat.write(executed, stem.with_suffix(".ipynb"))
        html, _ = HTMLExporter().from_notebook_node(executed)
        stem.with_suffix(".html").write_text(html, encoding="utf-8")
        print(f"wrote {stem}.ipynb and {stem}.html", flush=True)


if __name__ == "__main__":
    main()
