"""scripts/gpu_check.py, the check a session lent a GPU runs there, runs here on the CPU so it cannot rot: it
prints every RATIO and CHECK line, and in fp32 its batched == one-by-one and cached == uncached checks hold."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_the_gpu_check_runs_on_the_cpu_and_its_checks_hold(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        [
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--size",
            "small",
            "--rounds",
            "1",
            "--batch-size",
            "4",
            "--new-tokens",
            "4",
        ]
    )
    assert torch.is_grad_enabled(), "the check leaves its caller's grad mode as it was"
    lines = dict(re.findall(r"^((?:RATIO|CHECK) \S+) (\S+)$", capsys.readouterr().out, flags=re.M))
    for model in ("llama_1b", "mixtral_moe"):
        for ratio in ("capture_vs_floor", "capture_tokens_per_second", "steered_generate_vs_plain"):
            assert float(lines[f"RATIO {ratio}[{model}]"]) > 0
        assert float(lines[f"RATIO batched_vs_one_by_one_max_diff[{model}]"]) < 1e-5
        assert lines[f"CHECK cached_equals_uncached[{model}]"] == "True"
