"""The e2e lane: the product's real commands against the real vLLM 0.16.0 (its CPU build).

The environment (~8.5 GB, ~5 minutes the first time) is cached per machine by
turbo/cpu_vllm.py; the tiny checkpoints are made per run, offline, in seconds. Run with
``nox -s e2e``. Everything here needs x86_64 (or aarch64) Linux and no GPU.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from turbo import cpu_vllm, demo, paths

if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
    pytest.skip("vLLM's CPU build needs Linux on x86_64/aarch64", allow_module_level=True)


@dataclass(frozen=True)
class Lane:
    env: cpu_vllm.CpuEnv
    home: Path
    environ: dict[str, str]

    def invoke(self, *args: str, timeout: float = 900) -> demo.Result:
        return demo.invoke(list(args), self.environ, timeout=timeout)


@pytest.fixture(scope="session")
def cpu_env() -> cpu_vllm.CpuEnv:
    t0 = time.monotonic()
    env = demo.prepare_env(progress=lambda line: print(f"[cpu-vllm] {line}", flush=True))
    print(f"[cpu-vllm] environment ready in {time.monotonic() - t0:.0f} s: {env.root}")
    return env


@pytest.fixture(scope="session")
def tiny_next(cpu_env: cpu_vllm.CpuEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.make_checkpoint(cpu_env, tmp_path_factory.mktemp("models") / "tiny-qwen3-next")


@pytest.fixture(scope="session")
def lane(cpu_env: cpu_vllm.CpuEnv, tmp_path_factory: pytest.TempPathFactory) -> Lane:
    """A TURBO_HOME of its own with the CPU build adopted (what `invoke adopt-vllm` writes)."""
    home = tmp_path_factory.mktemp("turbo-home")
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL", "PORT", "HOST", "SERVED_MODEL_NAME", "VLLM_API_KEY")
    }
    environ["TURBO_HOME"] = str(home)
    lane = Lane(cpu_env, home, environ)
    res = lane.invoke("adopt-vllm", "--vllm", str(cpu_env.vllm))
    assert res.rc == 0, res.stderr
    return lane


@pytest.fixture(scope="session")
def model(lane: Lane, tiny_next: Path) -> Path:
    """The tiny Qwen3-Next, adopted (`invoke adopt-model`): what serve accepts."""
    res = lane.invoke("adopt-model", str(tiny_next))
    assert res.rc == 0, res.stdout + res.stderr
    return tiny_next


def stamp_of(lane: Lane) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((lane.home / "build-stamp.json").read_text())
    return data


def wait_health(port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"no /health on port {port} after {timeout:.0f} s")


def port_open(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except requests.RequestException:
        return False


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def complete(port: int, ids: list[int], n: int) -> dict[str, Any]:
    r = requests.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": "qwen3-next", "prompt": ids, "max_tokens": n, "temperature": 0,
              "ignore_eos": True, "return_token_ids": True},
        timeout=300,
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def transformers_greedy(env: cpu_vllm.CpuEnv, model: Path, ids: list[int], n: int) -> list[int]:
    proc = subprocess.run(
        [str(env.python), "-m", "turbo.tiny_model", "greedy", str(model), "--ids",
         json.dumps(ids), "--max-new-tokens", str(n)],
        env={**os.environ, "PYTHONPATH": str(paths.repo_root())},
        capture_output=True, text=True, check=True, timeout=300,
    )
    out: list[int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
