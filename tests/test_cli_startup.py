"""The command line answers ``--help`` and ``--version`` without loading torch, transformers or scikit-learn
(benchmarks/cli.py times it): the parser's choices come from modules that import nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sklearn", "pandas", "numpy")
PROBE = """
import sys
from xlalign.cli import build_parser, main
try:
    main({argv!r})
except SystemExit:
    pass
print("loaded:" + ",".join(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["capture", "--help"], ["evaluate", "--help"]])
def test_help_and_version_load_no_heavy_package(argv):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    assert out == "loaded:", f"xlalign {' '.join(argv)} imported {out}"


def test_the_neuron_metrics_the_parser_lists_are_those_measure_implements():
    from probes.analysis.alignment import NEURON_METRICS
    from probes.choices import NEURON_POOLINGS

    assert {metric for metrics in NEURON_POOLINGS.values() for metric in metrics} == set(NEURON_METRICS)
