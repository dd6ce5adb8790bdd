"""Redraw every figure of results/: ``python -m scripts.figures [--results DIR] [--out DIR]``."""

from importlib import import_module

from scripts.figures import SCRIPTS
from scripts.figures.files import main

if __name__ == "__main__":
    main([import_module(f"scripts.figures.{name}").draw for name in SCRIPTS], __doc__)
