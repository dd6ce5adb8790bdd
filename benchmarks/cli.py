"""How fast the command line answers before any work: ``xlalign --help``, ``--version`` and a subcommand's help,
each in a fresh process (as a user runs them), the median of several runs. Target: at most 1 s, so the imports
of torch, transformers and scikit-learn wait for the command that needs them.

Ends with ``RATIO help_seconds <median seconds of the slowest of the three>`` (target <= 1.0; a time, not a
ratio: the floor is Python's own start, measured too and printed beside it).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = {"--help": ["--help"], "--version": ["--version"], "capture --help": ["capture", "--help"]}
RUNS = 7


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    python = [sys.executable, "-c", "pass"]
    cli = [sys.executable, "-c", "import sys; from xlalign.cli import main; sys.exit(main())"]
    runs = {"python start": python, **{name: [*cli, *argv] for name, argv in COMMANDS.items()}}
    medians = {}
    for name, argv in runs.items():
        seconds(argv)  # warm the file cache
        medians[name] = statistics.median(seconds(argv) for _ in range(RUNS))
        print(f"{name:>16}: {medians[name]:.3f} s (median of {RUNS})")
    print(f"RATIO help_seconds {max(medians[name] for name in COMMANDS):.3f}")


if __name__ == "__main__":
    main()
