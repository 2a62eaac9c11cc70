"""serve: preflight failures (vLLM not built, model missing or incomplete, port in use, no GPU),
the memory fit, dry-run output, and real launches of the stand-in as `vllm` (detach + stop,
never healthy, early exit, foreground with Ctrl-C forwarded)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serve_fixtures import REPO, complete_model, fake_bin, path_with, usable_stamp
from turbo import endpoint, memfit, paths, serve
from turbo.doctor import Host
from turbo.errors import TurboError
from turbo.pins import load_pins
from turbo.profiles import Overrides, load_book


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# An idle Spark's /proc/meminfo: the memory fit must not depend on what the test host has free.
SPARK_MEMINFO = REPO / "tests" / "data" / "meminfo_spark"


def probe() -> serve.Probe:
    return serve.Probe(host=Host(which=lambda n: f"/opt/cuda/bin/{n}", env={},
                                 meminfo_path=SPARK_MEMINFO),
                       gpu=lambda: "NVIDIA GB10")


def prepared(model: Path, port: int, profile: str = "vanilla", **kw: object) -> serve.Prepared:
    ov = Overrides(model=str(model), port=port, **kw)  # type: ignore[arg-type]
    return serve.prepare(profile, load_pins(), ov, probe=probe(), environ={})


def status(prep: serve.Prepared) -> dict[str, str]:
    return {c.name: c.status for c in prep.checks}


def test_all_checks_pass_when_ready(tmp_path: Path) -> None:
    usable_stamp()
    prep = prepared(complete_model(tmp_path / "m"), free_port())
    assert status(prep) == {"vllm build": "pass", "model": "pass", "port": "pass",
                            "gpu": "pass", "memory fit": "pass"}
    assert serve.first_failure(prep.checks) is None


def test_vllm_not_built(tmp_path: Path) -> None:
    prep = prepared(complete_model(tmp_path / "m"), free_port())
    assert status(prep)["vllm build"] == "fail"
    err = serve.first_failure(prep.checks)
    assert err is not None and "build-vllm" in err.line()
    paths.stamp_path().parent.mkdir(parents=True, exist_ok=True)
    paths.stamp_path().write_text(json.dumps({"result": "failed"}))
    assert "last build result: failed" in prepared(tmp_path / "m", free_port()).checks[0].detail


def test_missing_model(tmp_path: Path) -> None:
    usable_stamp()
    prep = prepared(tmp_path / "absent", free_port())
    err = serve.first_failure(prep.checks)
    assert err is not None and "does not exist" in err.line() and "fetch-model" in err.line()


def test_incomplete_model(tmp_path: Path) -> None:
    usable_stamp()
    model = complete_model(tmp_path / "m")
    shard = next(model.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:10])
    err = serve.first_failure(prepared(model, free_port()).checks)
    assert err is not None and shard.name in err.line()


def test_port_in_use(tmp_path: Path) -> None:
    usable_stamp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = serve.first_failure(prepared(complete_model(tmp_path / "m"), port).checks)
    assert err is not None and f"127.0.0.1:{port} is in use" in err.line()
    assert "--port" in err.line()


def test_no_gpu(tmp_path: Path) -> None:
    usable_stamp()
    p = serve.Probe(host=Host(which=lambda n: None, env={}))
    prep = serve.prepare("vanilla", load_pins(), Overrides(model=str(complete_model(
        tmp_path / "m")), port=free_port()), probe=p, environ={})
    assert status(prep)["gpu"] == "fail"


def test_exposed_without_key_warns(tmp_path: Path) -> None:
    usable_stamp()
    prep = prepared(complete_model(tmp_path / "m"), free_port(), host="0.0.0.0")
    assert status(prep)["exposure"] == "warn"
    keyed = serve.prepare("vanilla", load_pins(), Overrides(
        model=str(tmp_path / "m"), host="0.0.0.0", port=free_port()), probe=probe(),
        environ={"VLLM_API_KEY": "k" * 20})
    assert {c.name: c.status for c in keyed.checks}["exposure"] == "pass"


def test_launch_stops_at_the_first_failure(tmp_path: Path) -> None:
    prep = prepared(tmp_path / "absent", free_port())
    with pytest.raises(TurboError, match="vllm build"):
        serve.launch(prep, serve.supervision(load_book(), 5, False), detach=True)


# ------------------------------------------------------------------------------ memory fit
SHAPE = memfit.ModelShape(48, 4, 2, 256, 16, 32, 128, 128, 4)


def fit(**kw: object) -> memfit.MemFit:
    args: dict[str, object] = {"weights_bytes": 45_000_000_000, "tensor_parallel": 1,
                               "utilization": 0.8, "max_model_len": 65536, "kv_dtype": "fp8",
                               "shape": SHAPE, "total_gb": 128.0, "available_gb": 120.0,
                               "overhead_gb": 8.0, "max_safe_utilization": 0.85}
    args.update(kw)
    return memfit.estimate(**args)  # type: ignore[arg-type]


def test_qwen3_next_kv_per_token() -> None:
    # 12 full-attention layers x K and V x 2 heads x 256 x 1 byte (fp8).
    assert SHAPE.kv_bytes_per_token("fp8") == 12 * 2 * 2 * 256
    assert SHAPE.kv_bytes_per_token("auto") == 2 * SHAPE.kv_bytes_per_token("fp8")


def test_memory_fit_on_a_spark() -> None:
    f = fit()
    assert f.status == "pass"
    assert f.kv_budget_gb == pytest.approx(0.8 * 128 - 45 - 8)
    assert f.sequences_fit > 16


def test_memory_fit_warns_and_fails() -> None:
    assert fit(available_gb=90.0).status == "warn"  # 102 GB claimed, 90 free
    assert fit(utilization=0.9).status == "warn"  # vLLM's default: OOM on first start
    too_small = fit(total_gb=48.0, available_gb=45.0)
    assert too_small.status == "fail" and "cannot hold" in too_small.fix
    assert fit(utilization=0.42).status == "fail"  # fits the machine, not the share
    assert fit(tensor_parallel=2, total_gb=64.0, available_gb=60.0).status == "pass"


# ------------------------------------------------------------------------------ dry run
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=120)


def test_dry_run_json_is_exact_and_redacted() -> None:
    r = cli("serve", "--profile", "mtp", "--dry-run", "--json", "--port", "8123", "--",
            "--api-key", "sk-abcdefghijklmnopqrstu")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["argv"][:2] == ["vllm", "serve"]
    # The key travels in vLLM's environment (out of `ps` and vLLM's argument log), masked.
    assert "--api-key" not in data["argv"] and data["env"]["VLLM_API_KEY"] == "***"
    assert "sk-abcdefghijklmnopqrstu" not in r.stdout
    assert data["env"]["VLLM_NVFP4_GEMM_BACKEND"] == "marlin"
    assert data["endpoint"] == "http://127.0.0.1:8123/v1"
    assert {c["name"] for c in data["checks"]} >= {"vllm build", "model", "memory fit"}


def test_cli_bad_input_is_one_line() -> None:
    r = cli("serve", "--profile", "nope", "--dry-run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "vanilla" in r.stderr
    r = cli("serve", "--set", "gpu-memory-util=0.8", "--dry-run")
    assert r.returncode == 2 and "Valid keys" in r.stderr


# ------------------------------------------------------------------------------ launches
@pytest.fixture
def launchable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    usable_stamp()
    monkeypatch.setenv("PATH", path_with(fake_bin(tmp_path / "bin")))
    return complete_model(tmp_path / "m")


def sup(timeout: float = 30) -> serve.Supervision:
    return serve.Supervision(health_timeout=timeout, health_interval=0.1, warmup=True,
                             warmup_timeout=10, stop_timeout=10)


def test_detach_then_stop(launchable: Path) -> None:
    port = free_port()
    lines: list[str] = []
    prep = prepared(launchable, port, "mtp")
    assert serve.launch(prep, sup(), detach=True, out=lines.append) == 0
    assert any("warm-up" in x for x in lines) and any(f":{port}/v1" in x for x in lines)
    recs = serve.running()
    assert len(recs) == 1 and recs[0]["port"] == port
    assert endpoint.healthy(endpoint.endpoint_for("127.0.0.1", port))
    assert serve.stop(port=port, out=lines.append) == 0
    assert not endpoint.healthy(endpoint.endpoint_for("127.0.0.1", port))
    assert serve.running() == [] and any("stopped mtp" in x for x in lines)
    assert serve.stop(out=lines.append) == 0 and "nothing to stop" in lines[-1]


def test_never_healthy_is_not_left_running(launchable: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_MODE", "never-healthy")
    port = free_port()
    with pytest.raises(TurboError, match="not healthy after 2 s") as exc:
        serve.launch(prepared(launchable, port), sup(2), detach=True, out=lambda _: None)
    assert "--health-timeout" in exc.value.line()
    assert serve.running() == []
    time.sleep(0.3)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_early_exit_shows_the_log_tail(launchable: Path, tmp_path: Path) -> None:
    (tmp_path / "bin" / "vllm").write_text("#!/bin/sh\necho 'CUDA error: out of memory'\n"
                                           "exit 3\n")
    with pytest.raises(TurboError, match=r"exited with code 3.*out of memory"):
        serve.launch(prepared(launchable, free_port()), sup(), detach=True, out=lambda _: None)
    assert serve.running() == []


def test_foreground_forwards_ctrl_c(launchable: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PATH": path_with(tmp_path / "bin"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--profile", "vanilla",
                             "--model", str(launchable), "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("serving qwen3-next at") or time.monotonic() > deadline:
            break
    assert any(x.startswith("serving qwen3-next at") for x in seen), "".join(seen)
    assert any(x.startswith("warm-up:") for x in seen)
    assert len(serve.running()) == 1
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "stand-in stopped" in rest and serve.running() == []
