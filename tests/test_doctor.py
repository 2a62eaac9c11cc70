"""doctor reports each fact truthfully, on a fake host and on this one."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from turbo import doctor, paths
from turbo.manifest import Manifest, ManifestFile, write_manifest
from turbo.pins import load_pins

PINS = load_pins()


@dataclass
class FakeHost(doctor.Host):
    """A DGX Spark on paper: every probe answers from fields."""

    arch: str = "aarch64"
    smi: str | None = "NVIDIA GB10, 12.1, 580.95.05"
    tools: dict[str, str] = field(default_factory=lambda: {"nvcc": "/c/bin/nvcc",
                                                           "ptxas": "/c/bin/ptxas"})
    nvcc_out: str = "Cuda compilation tools, release 13.0, V13.0.88"
    ptxas_rc: int = 0
    torch_out: str | None = "2.10.0+cu130 13.0 1"
    mem: dict[str, float] = field(default_factory=lambda: {"MemTotal": 128.0,
                                                           "MemAvailable": 110.0})
    free_gb: float = 500.0
    port_is_free: bool = True
    fake_env: Mapping[str, str] = field(default_factory=lambda: {"PIXI_ENVIRONMENT_NAME":
                                                                 "default"})

    def __post_init__(self) -> None:
        self.machine = lambda: self.arch
        self.which = lambda name: ("/usr/bin/nvidia-smi" if name == "nvidia-smi" and self.smi
                                   else self.tools.get(name))
        self.env = self.fake_env

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        if argv[0].endswith("nvidia-smi"):
            return (0, self.smi) if self.smi else (9, "")
        if argv[0].endswith("nvcc"):
            return 0, self.nvcc_out
        if argv[0].endswith("ptxas"):
            return self.ptxas_rc, "" if self.ptxas_rc == 0 else "ptxas fatal: bad target"
        if argv[0] == sys.executable and argv[1] == "-c" and "torch" in argv[2]:
            return (0, self.torch_out) if self.torch_out else (1, "No module named 'torch'")
        return 127, "unknown"

    def disk_free_gb(self, path: Path) -> float:
        return self.free_gb

    def port_free(self, host: str, port: int) -> bool:
        return self.port_is_free

    def meminfo_gb(self) -> dict[str, float]:
        return self.mem


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def spark_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A pixi environment on paper for the environment rows: CUDA in conda-forge's layout with
    the activation's view, pixi 0.65, and installed versions that meet pixi.toml."""
    from tests.test_cuda_layout import conda_forge_prefix
    from turbo import activation, env_checks

    prefix = conda_forge_prefix(tmp_path, "sbsa-linux")
    env = activation.emulate(prefix, base_env={"PATH": "/usr/bin:/bin"})
    monkeypatch.setattr(env_checks, "_installed", lambda names: {
        "torch": "2.10.0+cu130", "triton": "3.6.0", "transformers": "4.57.6",
        "huggingface-hub": "0.36.2", "setuptools": "80.9.0", "flashinfer-python": "0.6.3",
        "numba": "0.61.2"})
    return {"PIXI_ENVIRONMENT_NAME": "default", "CUDA_HOME": env["CUDA_HOME"],
            "CONDA_PREFIX": str(prefix), "PIXI_EXE": "/spark/bin/pixi"}


def test_healthy_spark_passes_everything_but_build_and_model(spark_env: dict[str, str]) -> None:
    host = FakeHost(fake_env=spark_env)
    real_run = host.run
    host.run = lambda argv, timeout=20.0: (  # type: ignore[method-assign]
        (0, "pixi 0.66.0") if argv[0] == "/spark/bin/pixi" else real_run(argv, timeout))
    checks = by_name(doctor.run_checks(PINS, host))
    assert checks["pixi version"].status == doctor.PASS
    assert checks["cuda headers"].status == doctor.PASS
    assert checks["declared vs installed"].status == doctor.PASS
    assert checks["gpu"].status == doctor.PASS and "12.1" in checks["gpu"].detail
    assert checks["driver"].status == doctor.PASS
    assert checks["cuda toolkit"].status == doctor.PASS
    assert checks["ptxas sm_121a (E2M1)"].status == doctor.PASS
    assert checks["memory"].status == doctor.PASS
    assert checks["torch"].status == doctor.PASS
    assert checks["vllm build"].status == doctor.WARN  # no stamp in the isolated TURBO_HOME
    assert checks["model"].status == doctor.WARN
    assert doctor.exit_code(list(checks.values())) == 0


def test_no_gpu_fails_but_everything_else_is_still_checked() -> None:
    checks = doctor.run_checks(PINS, FakeHost(smi=None))
    named = by_name(checks)
    assert named["gpu"].status == doctor.FAIL
    assert named["driver"].status == doctor.FAIL
    assert named["cuda toolkit"].status == doctor.PASS
    # 13 host checks + state, log and model dir write access + pixi version, cuda headers,
    # declared vs installed
    assert len(checks) == 19
    assert doctor.exit_code(checks) == 1


@pytest.mark.parametrize(
    ("host", "name", "status"),
    [
        (FakeHost(smi="NVIDIA H100 80GB HBM3, 9.0, 580.65.06"), "gpu", doctor.WARN),
        (FakeHost(smi="NVIDIA GB10, 12.1, 575.51.03"), "driver", doctor.FAIL),
        (FakeHost(nvcc_out="Cuda compilation tools, release 12.8, V12.8.93"), "cuda toolkit",
         doctor.FAIL),
        (FakeHost(ptxas_rc=255), "ptxas sm_121a (E2M1)", doctor.FAIL),
        (FakeHost(tools={}), "cuda toolkit", doctor.FAIL),
        (FakeHost(mem={"MemTotal": 128.0, "MemAvailable": 30.0}), "memory", doctor.WARN),
        (FakeHost(free_gb=10.0), "disk (model)", doctor.FAIL),
        (FakeHost(free_gb=10.0), "disk (build)", doctor.FAIL),
        (FakeHost(port_is_free=False), "serve port", doctor.WARN),
        (FakeHost(fake_env={}), "pixi environment", doctor.WARN),
        (FakeHost(arch="x86_64"), "cpu architecture", doctor.WARN),
        (FakeHost(torch_out=None), "torch", doctor.FAIL),
        (FakeHost(torch_out="2.13.0+cpu None 0"), "torch", doctor.WARN),
        (FakeHost(torch_out="2.10.0+cu130 13.0 0"), "torch", doctor.WARN),
    ],
)
def test_each_problem_is_reported_with_a_fix(host: FakeHost, name: str, status: str) -> None:
    check = by_name(doctor.run_checks(PINS, host))[name]
    assert check.status == status
    assert check.fix, f"{name} must say what to do"


def test_build_stamp_and_model_manifest_are_read(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = paths.stamp_path()
    stamp.parent.mkdir(parents=True)
    stamp.write_text(json.dumps({"result": "ok", "commit": PINS.vllm.commit,
                                 "arch_list": "12.1a"}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    write_manifest(model, Manifest(repo=PINS.model.repo, revision="a" * 40, fetched_at="now",
                                   files=(ManifestFile("config.json", 2, "0" * 64),)))
    monkeypatch.setenv("MODEL", str(model))
    checks = by_name(doctor.run_checks(PINS, FakeHost(free_gb=1.0)))
    assert checks["vllm build"].status == doctor.PASS
    assert PINS.vllm.commit[:12] in checks["vllm build"].detail
    assert checks["model"].status == doctor.PASS
    # Already in place: little free disk is no longer a failure.
    assert checks["disk (model)"].status == doctor.PASS
    assert checks["disk (build)"].status == doctor.PASS


def test_failed_build_stamp_warns() -> None:
    stamp = paths.stamp_path()
    stamp.parent.mkdir(parents=True)
    stamp.write_text(json.dumps({"result": "failed"}))
    assert by_name(doctor.run_checks(PINS, FakeHost()))["vllm build"].status == doctor.WARN


def test_port_probe_sees_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert doctor.Host().port_free("127.0.0.1", port) is False


@pytest.mark.skipif(not shutil.which("ptxas"), reason="no CUDA ptxas on PATH")
def test_ptxas_probe_is_meaningful_on_real_ptxas(tmp_path: Path) -> None:
    """The probe PTX assembles for sm_121a and is rejected for plain sm_121 (facts §2)."""
    ptxas = shutil.which("ptxas")
    assert ptxas
    for target, ok in [("sm_121a", True), ("sm_121", False)]:
        src = tmp_path / f"{target}.ptx"
        src.write_text(doctor.E2M1_PTX.format(target=target))
        proc = subprocess.run([ptxas, f"-arch={target}", str(src), "-o",
                               str(tmp_path / "o.cubin")], capture_output=True, text=True)
        assert (proc.returncode == 0) is ok, proc.stderr


def test_render_and_json_agree() -> None:
    checks = doctor.run_checks(PINS, FakeHost(smi=None))
    table = doctor.render(checks)
    assert "FAIL" in table and "what to do" in table
    data = json.loads(doctor.to_json(checks))
    assert data["ok"] is False
    assert [c["name"] for c in data["checks"]] == [c.name for c in checks]


def test_invoke_doctor_on_this_machine_exits_by_failures() -> None:
    """The real CLI on the real host: the table prints and the exit code follows the fails."""
    proc = subprocess.run([sys.executable, "-m", "invoke", "doctor", "--json"], cwd=REPO,
                          capture_output=True, text=True)
    data = json.loads(proc.stdout)
    fails = [c for c in data["checks"] if c["status"] == "fail"]
    assert proc.returncode == (1 if fails else 0), proc.stderr


def test_incomplete_model_copy_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model-00001.safetensors").write_bytes(b"x" * 10)
    write_manifest(model, Manifest(repo=PINS.model.repo, revision="b" * 40, fetched_at="now",
                                   files=(ManifestFile("model-00001.safetensors", 20, "0" * 64),)))
    monkeypatch.setenv("MODEL", str(model))
    check = by_name(doctor.run_checks(PINS, FakeHost()))["model"]
    assert check.status == doctor.FAIL
    assert "model-00001.safetensors" in check.detail and "fetch-model" in check.fix


@pytest.mark.skipif(not shutil.which("ptxas"), reason="no CUDA ptxas on PATH")
def test_ptxas_row_on_this_hosts_real_ptxas() -> None:
    """The row itself (not only its PTX) passes with CUDA 13.0's ptxas."""
    check = doctor.check_ptxas_sm121a(doctor.Host(env={}))
    assert check.status == doctor.PASS, check
