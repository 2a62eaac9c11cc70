"""build-vllm without building: toolchain verdicts, the MAX_JOBS rule, progress, failure
analysis, stamp decisions and the --dry-run plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from turbo import build, doctor, paths, stamp, toolchain
from turbo.errors import TurboError
from turbo.pins import load_pins

PINS = load_pins()
PY = "/spark/env/bin/python"


@dataclass
class SparkHost(doctor.Host):
    """A DGX Spark with the pixi environment, on paper; each field can be broken by a test."""

    torch: str | None = "2.10.0+cu130"
    torch_cuda: str | None = "13.0"
    nvcc_release: str = "13.0"
    ptxas_ok: bool = True
    gcc: str = "gcc (conda-forge gcc 14.3.0-3) 14.3.0"
    cmake: str = "cmake version 3.31.6"
    tools: dict[str, str] = field(default_factory=lambda: {
        t: f"/spark/env/bin/{t}" for t in ("nvcc", "ptxas", "gcc", "cmake", "ninja", "ccache",
                                           "cuobjdump")})
    free_gb: float = 500.0
    mem_available: float = 119.0
    fake_env: Mapping[str, str] = field(default_factory=lambda: {"CUDA_HOME": "/spark/env"})

    def __post_init__(self) -> None:
        self.which = self.tools.get
        self.env = self.fake_env
        self.machine = lambda: "aarch64"

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        tool = Path(argv[0]).name
        if argv[0] == PY and argv[1] == "-c":
            out: dict[str, Any] = {"python": "3.12.11", "machine": "aarch64", "vllm": None}
            if self.torch is None:
                out["torch_error"] = "PackageNotFoundError: torch"
            else:
                out.update(torch=self.torch, torch_cuda=self.torch_cuda)
            return 0, json.dumps(out)
        if tool == "nvcc":
            rel = self.nvcc_release
            return 0, f"Cuda compilation tools, release {rel}, V{rel}.88"
        if tool == "ptxas":
            return (0, "") if self.ptxas_ok else (255, "ptxas fatal   : Value 'sm_121a' is not "
                                                       "defined for option 'gpu-name'")
        versions = {"gcc": self.gcc, "cmake": self.cmake, "ninja": "1.12.1"}
        if tool in versions:
            return 0, versions[tool]
        return 127, f"unexpected {argv}"

    def disk_free_gb(self, path: Path) -> float:
        return self.free_gb

    def meminfo_gb(self) -> dict[str, float]:
        return {"MemTotal": 128.0, "MemAvailable": self.mem_available}


def _check(host: SparkHost) -> toolchain.Toolchain:
    return toolchain.check_toolchain(PINS, python=PY, target="cuda", host=host)


def test_a_good_spark_passes_and_records_versions() -> None:
    tc = _check(SparkHost())
    assert (tc.torch, tc.torch_cuda, tc.cuda, tc.machine) == ("2.10.0+cu130", "13.0", "13.0",
                                                              "aarch64")
    assert tc.gcc and "14.3.0" in tc.gcc and tc.ccache == "/spark/env/bin/ccache"


@pytest.mark.parametrize(("broken", "what", "says"), [
    ({"torch": None}, "torch", "torch is not importable"),
    ({"torch": "2.9.1+cu130"}, "torch", "torch 2.9.1+cu130 is installed, the pin is 2.10.0"),
    ({"torch_cuda": None, "torch": "2.10.0+cpu"}, "torch", "built for CUDA none (CPU build)"),
    ({"torch_cuda": "12.8", "torch": "2.10.0+cu128"}, "torch", "want CUDA 13.0"),
    ({"tools": {"ptxas": "/x/ptxas"}, "fake_env": {}}, "nvcc", "nvcc not found"),
    ({"nvcc_release": "12.9"}, "nvcc", "is CUDA 12.9, want 13.0.x"),
    ({"ptxas_ok": False}, "ptxas", "rejects sm_121a"),
    ({"gcc": "gcc (GCC) 16.1.0"}, "gcc", "gcc 16"),
    ({"cmake": "cmake version 3.22.1"}, "cmake", "older than 3.26"),
    ({"free_gb": 5.0}, "disk", "the build needs ~30 GB"),
])
def test_each_toolchain_failure_is_one_clear_line(broken: dict[str, Any], what: str,
                                                  says: str) -> None:
    host = SparkHost(**broken)
    with pytest.raises(TurboError) as err:
        _check(host)
    line = err.value.line()
    assert err.value.what == f"toolchain check ({what})"
    assert says in line and "\n" not in line and err.value.fix


@pytest.mark.parametrize("tool", ["gcc", "cmake", "ninja"])
def test_missing_build_tool_is_named(tool: str) -> None:
    host = SparkHost()
    host.tools.pop(tool)
    with pytest.raises(TurboError, match=f"`{tool}` is not on PATH"):
        _check(host)


def test_empty_target_needs_only_torch() -> None:
    host = SparkHost(tools={}, fake_env={}, torch="2.13.0+cpu", torch_cuda=None)
    tc = toolchain.check_toolchain(PINS, python=PY, target="empty", host=host)
    assert tc.nvcc is None and tc.torch == "2.13.0+cpu"


# --------------------------------------------------------------------------- MAX_JOBS rule
def test_jobs_rule_on_a_spark_keeps_nvcc_inside_memory() -> None:
    jobs = build.jobs_rule(20, 119.0, PINS)
    b = PINS.build
    assert jobs.max_jobs == int(119.0 * b.mem_fraction // b.gb_per_compile_thread)
    assert jobs.max_jobs * b.gb_per_compile_thread <= 119.0 * b.mem_fraction
    assert jobs.nvcc_threads == b.nvcc_threads
    assert "nvcc processes" in jobs.rule


def test_jobs_rule_is_capped_by_cores_and_never_zero() -> None:
    assert build.jobs_rule(4, 500.0, PINS).max_jobs == 4
    tiny = build.jobs_rule(20, 2.0, PINS)
    assert (tiny.max_jobs, tiny.nvcc_threads) == (1, 1)


def test_jobs_rule_with_less_memory_available_gives_fewer_jobs() -> None:
    # A server holding 80 GB of the shared memory leaves less for the compilers.
    assert build.jobs_rule(20, 39.0, PINS).max_jobs < build.jobs_rule(20, 119.0, PINS).max_jobs


def test_explicit_max_jobs_and_threads_win() -> None:
    jobs = build.jobs_rule(20, 119.0, PINS, max_jobs=6, nvcc_threads=3)
    assert (jobs.max_jobs, jobs.nvcc_threads) == (6, 3) and "MAX_JOBS=6 given" in jobs.rule


# --------------------------------------------------------------------------- progress, failures
def test_progress_counts_steps_and_estimates_time_left() -> None:
    now = [100.0]
    prog = build.NinjaProgress(clock=lambda: now[0])
    assert prog.feed("-- Configuring done") is None
    first = prog.feed("[1/401] Building CXX object CMakeFiles/_C.dir/csrc/cache_kernels.cu.o")
    assert first is not None and (first.done, first.total, first.eta_s) == (1, 401, None)
    now[0] += 100.0
    p = prog.feed("[11/401] Building CUDA object CMakeFiles/_C.dir/csrc/attention.cu.o")
    assert p is not None and p.eta_s == pytest.approx(390 * 100.0 / 10)
    assert p.line().startswith("[11/401]") and "ETA 1h05m" in p.line()


def test_progress_restarts_its_estimate_when_the_total_changes() -> None:
    now = [0.0]
    prog = build.NinjaProgress(clock=lambda: now[0])
    prog.feed("[1/9] Creating directories for 'cutlass-populate'")
    now[0] = 50.0
    prog.feed("[9/9] Completed 'cutlass-populate'")
    p = prog.feed("[1/300] Building CUDA object a.o")
    assert p is not None and p.eta_s is None
    now[0] = 60.0
    p = prog.feed("[3/300] Building CUDA object b.o")
    assert p is not None and p.eta_s == pytest.approx(297 * 10.0 / 2)


OOM_LINES = [
    "nvcc error   : 'cicc' died due to signal 9 (Kill signal)",
    "c++: fatal error: Killed signal terminated program cc1plus",
]


@pytest.mark.parametrize("line", OOM_LINES)
def test_a_compiler_killed_for_memory_says_lower_max_jobs(line: str, tmp_path: Path) -> None:
    lines = ["[120/400] Building CUDA object x.o", "FAILED: x.o", line, "ninja: build stopped"]
    jobs = build.jobs_rule(20, 119.0, PINS)
    err = build.failure_error("build", lines, tmp_path / "b.log", jobs)
    assert "killed for lack of memory" in err.why
    assert f"--max-jobs {jobs.max_jobs // 2}" in err.fix and str(tmp_path / "b.log") in err.fix


def test_an_ordinary_failure_names_the_error_not_memory(tmp_path: Path) -> None:
    lines = ["[3/400] Building CUDA object y.o", "FAILED: y.o",
             "csrc/y.cu(12): error: identifier \"foo\" is undefined", "ninja: build stopped",
             "  error: subprocess-exited-with-error", "note: This error originates from pip"]
    assert not build.oom_killed(lines)
    summary = build.error_summary(lines)
    assert 'csrc/y.cu(12): error: identifier "foo" is undefined' in summary
    err = build.failure_error("build", lines, tmp_path / "b.log", None)
    assert "lack of memory" not in err.line() and str(tmp_path / "b.log") in err.fix


def test_run_step_streams_to_the_log_and_reports_failure(tmp_path: Path) -> None:
    from turbo.console import TaskLog

    script = ("print('[1/2] a'); print('[2/2] b'); print('x.cu(1): error: boom'); "
              "raise SystemExit(3)")
    step = build.Step("demo", [sys.executable, "-c", script], tmp_path)
    seen: list[str] = []
    with TaskLog("t", tmp_path) as log, pytest.raises(TurboError, match="error: boom"):
        build.run_step(step, log, seen.append)
    text = log.path.read_text()
    assert "[1/2] a" in text and "x.cu(1): error: boom" in text
    assert any("[2/2] 100.0%" in s for s in seen) and any("| x.cu(1): error: boom" in s
                                                            for s in seen)


# --------------------------------------------------------------------------- stamp decisions
def _plan(host: SparkHost | None = None, **opts: Any) -> build.BuildPlan:
    h = host or SparkHost()
    tc = toolchain.quick_probe(PINS, python=PY, target=opts.get("target", "cuda"), host=h)
    return build.make_plan(build.BuildOptions(python=PY, **opts), PINS, h, tc)


def _ok_stamp(plan: build.BuildPlan) -> dict[str, Any]:
    return {"result": "ok", "inputs": plan.inputs, "inputs_digest":
            stamp.inputs_digest(plan.inputs)}


def test_same_inputs_are_unchanged() -> None:
    plan = _plan()
    assert stamp.unchanged(_ok_stamp(plan), _plan().inputs) is None


@pytest.mark.parametrize(("change", "key"), [
    ({"arch_list": "12.0f"}, "arch_list"),
    ({"ref": "0" * 40}, "commit"),
    ({"host": SparkHost(torch="2.10.1+cu130")}, "torch"),
    ({"host": SparkHost(nvcc_release="13.1")}, "cuda"),
])
def test_any_input_change_means_rebuild(change: dict[str, Any], key: str) -> None:
    old = _ok_stamp(_plan())
    why = stamp.unchanged(old, _plan(**change).inputs)
    assert why is not None and why.startswith("inputs changed") and f"{key} " in why


def test_a_changed_patch_means_rebuild(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil

    from turbo import patching

    series = Path(shutil.copytree(patching.series_dir(), tmp_path / "patches"))
    monkeypatch.setattr(patching, "series_dir", lambda: series)
    old = _ok_stamp(_plan())
    first = sorted(series.glob("*.patch"))[0]
    first.write_text(first.read_text() + "\n")
    why = stamp.unchanged(old, _plan().inputs)
    assert why is not None and "patch_digest" in why


def test_failed_or_building_stamps_never_count_as_built() -> None:
    plan = _plan()
    for result in ("failed", "building"):
        why = stamp.unchanged({**_ok_stamp(plan), "result": result}, plan.inputs)
        assert why is not None and result in why
    assert stamp.unchanged(None, plan.inputs) == "no build stamp yet"


def test_max_jobs_does_not_force_a_rebuild() -> None:
    assert stamp.unchanged(_ok_stamp(_plan()), _plan(max_jobs=3).inputs) is None


def test_stamp_write_is_atomic_and_readable() -> None:
    p = stamp.write_stamp({"result": "ok", "commit": "abc"})
    assert p == paths.stamp_path() and stamp.read_stamp() == {"result": "ok", "commit": "abc",
                                                             "schema": stamp.SCHEMA}
    assert [f.name for f in p.parent.iterdir()] == [p.name]


# --------------------------------------------------------------------------- plan / dry run
def test_plan_has_every_build_setting() -> None:
    plan = _plan(overrides={"cutlass": str(REPO)})
    env = plan.env
    assert env["TORCH_CUDA_ARCH_LIST"] == PINS.toolchain.arch_list
    assert env["MAX_JOBS"] == str(plan.jobs.max_jobs) and env["NVCC_THREADS"]
    assert env["VLLM_CUTLASS_SRC_DIR"] == str(REPO)
    assert env["CCACHE_DIR"].startswith(str(paths.cache_dir()))
    assert Path(env["DIST_EXTRA_CONFIG"]).parent == plan.build_dir
    assert env["SETUPTOOLS_SCM_PRETEND_VERSION_FOR_VLLM"].startswith(PINS.vllm.describe)
    build_step = next(s for s in plan.steps if s.name.startswith("build and install"))
    assert build_step.argv is not None and build_step.argv[-4:] == [
        "--no-build-isolation", "--no-deps", "--force-reinstall", "."]
    fetch = next(s for s in plan.steps if s.name == "fetch vLLM")
    assert ["git", "fetch", "--quiet", "--depth", "1", "--no-tags", "origin",
            PINS.vllm.commit] in fetch.commands


def test_unknown_override_or_missing_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TurboError, match="unknown name 'cutlas'"):
        _plan(overrides={"cutlas": str(tmp_path)})
    with pytest.raises(TurboError, match="is not a directory"):
        _plan(overrides={"flashmla": str(tmp_path / "nope")})


def _invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_dry_run_prints_the_whole_plan_and_exits_zero() -> None:
    proc = _invoke("build-vllm", "--dry-run", "--max-jobs", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert PINS.vllm.commit in out and f"TORCH_CUDA_ARCH_LIST={PINS.toolchain.arch_list}" in out
    assert "MAX_JOBS=3" in out and "use_existing_torch.py" in out
    assert "pip install -v --no-build-isolation --no-deps --force-reinstall ." in out
    assert f"git fetch --quiet --depth 1 --no-tags origin {PINS.vllm.commit}" in out
    assert not paths.stamp_path().exists() and not paths.vllm_src_dir().exists()


def test_dry_run_json_is_machine_readable() -> None:
    proc = _invoke("build-vllm", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["ref"] == PINS.vllm.commit and plan["would_build"] == "no build stamp yet"
    assert any(s["name"] == "apply patch series" for s in plan["steps"])


def test_bad_ref_is_one_line_and_nonzero() -> None:
    proc = _invoke("build-vllm", "--dry-run", "--ref", "main")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "full 40-hex commit hash" in proc.stderr




def test_steps_run_by_their_kind_not_their_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renaming every step changes no action: each still does its own work, and the cubin
    step's shown argv (a placeholder for each .so) is never run as a command."""
    import dataclasses

    from turbo import build_steps, patching, source

    planned = build_steps.make_plan

    def renamed(*args: Any) -> build.BuildPlan:
        plan = planned(*args)
        steps = [dataclasses.replace(s, name=f"step {i}") for i, s in enumerate(plan.steps)]
        return dataclasses.replace(plan, steps=steps)

    did: list[str] = []
    ran: list[list[str]] = []

    def fetch(repo: str, commit: str, dest: Path, **_: Any) -> source.SourceTree:
        did.append("fetch")
        (dest / "requirements").mkdir(parents=True)
        (dest / "requirements" / "build.txt").write_text("cmake>=3.26\nsetuptools\n")
        return source.SourceTree(dest, "git", commit, commit)

    def apply(tree: Path, ref: str) -> patching.PatchReport:
        did.append("patches")
        return patching.PatchReport(src=str(tree), ref=ref, action="apply", applied=["p"])

    def cubins(tool: str, so_files: list[Path]) -> dict[str, list[str]]:
        did.append("cubins")
        return {"_C.abi3.so": ["sm_121a"]}

    def run(step: build.Step, *_: Any, **__: Any) -> list[str]:
        assert step.argv is not None
        ran.append(step.argv)
        return []

    monkeypatch.setattr(build_steps, "make_plan", renamed)
    monkeypatch.setattr(source, "fetch_commit", fetch)
    monkeypatch.setattr(patching, "apply_series", apply)
    monkeypatch.setattr(build, "cubin_targets", cubins)
    monkeypatch.setattr(build, "run_step", run)
    said: list[str] = []
    res = build.build(build.BuildOptions(python=PY), PINS, host=SparkHost(), echo=said.append)
    assert did == ["fetch", "patches", "cubins"]
    assert not any(arg.startswith("<") for argv in ran for arg in argv), ran
    assert ran[0][1:] == ["use_existing_torch.py"]
    assert (paths.state_dir() / "build" / "build-requirements.txt").read_text() == "setuptools\n"
    st = res.stamp
    assert st["result"] == "ok" and st["cubins"]["gb10"] and st["patches"]["applied"] == ["p"]
    assert st["extension_load"]["ok"] and "==> step 0" in said

# --------------------------------------------------------------------------- two nodes (#8)
NODE = {"result": "ok", "commit": PINS.vllm.commit, "patch_digest": "p" * 64, "arch_list": "12.1a",
        "target": "cuda", "torch": "2.10.0+cu130", "cuda": "13.0", "machine": "aarch64",
        "python": "3.12.11", "vllm_version": "0.16.0rc2.dev236+g3b30e6150.cu130",
        "finished_at": "2026-11-26T10:00:00+0000", "source": {"path": "/home/a/.turbo/vllm"}}


def test_same_build_on_two_nodes_passes_despite_paths_and_times() -> None:
    other = {**NODE, "finished_at": "2026-11-27T09:00:00+0000", "source": {"path": "/b/vllm"}}
    assert stamp.compare(NODE, other) == []
    assert stamp.identity_digest(NODE) == stamp.identity_digest(other)
    stamp.require_same_build(NODE, other)


@pytest.mark.parametrize("key", stamp.IDENTITY_FIELDS)
def test_each_differing_field_stops_the_launch_with_both_digests(key: str) -> None:
    other = {**NODE, key: "something-else"}
    # A build made here has no installed_digest (only adopted installs do): it compares as None.
    assert stamp.compare(NODE, other) == [(key, NODE.get(key), "something-else")]
    with pytest.raises(TurboError) as err:
        stamp.require_same_build(NODE, other, local_name="head", remote_name="worker")
    line = err.value.line()
    assert stamp.identity_digest(NODE)[:16] in line and stamp.identity_digest(other)[:16] in line
    assert f"{key}: " in line and "install-wheel" in err.value.fix


def test_build_stamp_task_compares_files(tmp_path: Path) -> None:
    stamp.write_stamp(NODE)
    other = tmp_path / "worker.json"
    stamp.write_stamp({**NODE, "torch": "2.10.1+cu130"}, other)
    env = {**os.environ, "TURBO_HOME": str(paths.state_dir())}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build-stamp", "--compare", str(other)],
                          cwd=REPO, text=True, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 1 and "torch: 2.10.0+cu130 vs 2.10.1+cu130" in proc.stderr
    stamp.write_stamp(NODE, other)
    proc = subprocess.run([sys.executable, "-m", "invoke", "build-stamp", "--compare", str(other)],
                          cwd=REPO, text=True, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0 and "same build" in proc.stdout


# --------------------------------------------------------------------------- cubin check
def _cuobjdump() -> str | None:
    import shutil

    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia  # the nvidia-cuda-cuobjdump wheel (kernels dependency group)
    except ImportError:
        return None
    for root in nvidia.__path__:
        for cand in Path(root).glob("*/bin/cuobjdump"):
            return str(cand)
    return None


@pytest.mark.parametrize(("gencode", "gb10"), [
    (["-gencode", "arch=compute_121a,code=sm_121a", "-gencode", "arch=compute_90,code=sm_90"],
     True),
    (["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_120a,code=sm_120a"],
     False),
])
def test_cubin_targets_read_from_a_real_shared_object(tmp_path: Path, gencode: list[str],
                                                      gb10: bool) -> None:
    import shutil

    nvcc, dump = shutil.which("nvcc"), _cuobjdump()
    if not nvcc or not dump:
        pytest.skip("needs nvcc and cuobjdump (the nvidia-cuda-cuobjdump wheel)")
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    so = tmp_path / "_C.abi3.so"
    subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", *gencode, str(src), "-o", str(so)],
                   check=True, capture_output=True, timeout=300)
    targets = build.cubin_targets(dump, [so])
    want = sorted(g.split("code=")[1] for g in gencode if "code=" in g)
    assert targets == {"_C.abi3.so": want}
    assert build.gb10_ok(targets) is gb10
