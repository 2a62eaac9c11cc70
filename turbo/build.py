"""build-vllm: plan the whole build, then run it step by step with progress, a log and a stamp.

The plan is plain data (argv lists and env) so ``--dry-run`` prints exactly what would run.
Resumability comes from three places that survive a Ctrl-C: the verified source checkout, the
CMake build directory (kept in the state dir through DIST_EXTRA_CONFIG) and ccache.

vLLM is installed as a regular (non-editable) package: setuptools' editable install
re-initialises build_ext and builds in a new temporary directory every time, ignoring any
configured build_temp (tests/test_build_cpu.py shows both behaviours), so an interrupted
editable build would start CMake from nothing. A regular install keeps the build directory,
makes `invoke wheel` a repackaging rather than a rebuild, and leaves the installed vLLM
independent of later changes to the source tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turbo import paths, source, stamp, toolchain
from turbo.console import TaskLog, redact_argv, redact_env
from turbo.errors import TurboError
from turbo.host import Host
from turbo.pins import Pins

# Local-source overrides for the sources vLLM's CMake would otherwise download (air-gapped
# builds): option name -> the environment variable vLLM 0.16's CMake reads.
OVERRIDES = {
    "cutlass": "VLLM_CUTLASS_SRC_DIR",
    "flash_attn": "VLLM_FLASH_ATTN_SRC_DIR",
    "flashmla": "FLASH_MLA_SRC_DIR",
    "qutlass": "QUTLASS_SRC_DIR",
    "triton_kernels": "TRITON_KERNELS_SRC_DIR",
}

# Shared objects whose load proves the CUDA build works; the first is required.
EXTENSIONS = ("vllm._C", "vllm._moe_C")

# Targets whose SASS runs on GB10 (sm_121): plain sm_12x cubins run on any later 12.y, the "f"
# family targets on all of 12.x; sm_120a does NOT (arch-specific code is not forward-portable).
GB10_CUBINS = ("sm_121a", "sm_121f", "sm_121", "sm_120f", "sm_120")

# A compiler killed by the kernel's OOM killer looks like one of these in the build output.
OOM_PATTERNS = (
    re.compile(r"died due to signal 9"),
    re.compile(r"Killed signal terminated program"),
    re.compile(r"signal 9 \(Kill"),
    re.compile(r"internal compiler error: Killed"),
    re.compile(r"(^|\s)Killed(\s|$)"),
    re.compile(r"std::bad_alloc|out of memory allocating", re.IGNORECASE),
)
_ERROR_LINE = re.compile(
    r"(\berror\b|FAILED:|fatal|CMake Error|undefined reference|"
    r"No such file|Traceback|Error:)",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- MAX_JOBS rule
@dataclass(frozen=True)
class Jobs:
    max_jobs: int
    nvcc_threads: int
    rule: str


def jobs_rule(
    cores: int,
    mem_available_gb: float,
    pins: Pins,
    *,
    max_jobs: int | None = None,
    nvcc_threads: int | None = None,
) -> Jobs:
    """MAX_JOBS and NVCC_THREADS so the compilers cannot exhaust memory.

    The rule: compile threads = min(cores, floor(MemAvailable * mem_fraction /
    gb_per_compile_thread)), at least 1. vLLM's setup.py runs MAX_JOBS // NVCC_THREADS nvcc
    processes of NVCC_THREADS threads each, so MAX_JOBS is the thread budget. On GB10 the 128 GB
    are shared with the GPU: MemAvailable (not MemTotal) keeps a running server's memory out of
    the budget. Explicit values win but are still capped by the rule unless they are smaller.
    """
    b = pins.build
    by_mem = int(mem_available_gb * b.mem_fraction // b.gb_per_compile_thread)
    budget = max(1, min(cores, by_mem))
    threads = max(1, min(nvcc_threads or b.nvcc_threads, budget))
    jobs = budget if max_jobs is None else max(1, max_jobs)
    jobs = max(jobs, threads)
    rule = (
        f"min({cores} cores, {mem_available_gb:.0f} GB available x {b.mem_fraction} / "
        f"{b.gb_per_compile_thread} GB per compile thread) = {budget} threads; "
        f"{jobs // threads} nvcc processes x {threads} threads"
    )
    if max_jobs is not None:
        rule += f" (MAX_JOBS={max_jobs} given)"
    return Jobs(jobs, threads, rule)


def host_jobs(
    pins: Pins, host: Host, *, max_jobs: int | None = None, nvcc_threads: int | None = None
) -> Jobs:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    mem = host.meminfo_gb().get("MemAvailable", 8.0)
    return jobs_rule(cores, mem, pins, max_jobs=max_jobs, nvcc_threads=nvcc_threads)


# --------------------------------------------------------------------------- options and plan
@dataclass(frozen=True)
class BuildOptions:
    python: str = sys.executable
    target: str = "cuda"
    ref: str | None = None  # None: the pinned commit (or the --src tree's own version)
    repo: str | None = None  # None: the pinned repository
    src: Path | None = None
    arch_list: str | None = None
    max_jobs: int | None = None
    nvcc_threads: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    runtime_deps: bool = True
    # Install vLLM's requirements with pip (the pre-pixi way). None: only outside a pixi
    # environment; inside one, pixi.toml declares them and the build only checks (pixi puts
    # its own versions back over whatever pip changes).
    pip_deps: bool | None = None
    force: bool = False
    verbose: bool = False
    # Which ref's patches to apply (default: the tree's own commit or version). For a fork or
    # mirror whose commit hash differs from the ref the patches were written for.
    patch_ref: str | None = None


@dataclass
class Step:
    name: str
    argv: list[str] | None  # None: done in this process (described by ``note``)
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # set on top of the inherited env
    note: str = ""
    commands: list[list[str]] = field(default_factory=list)  # what an in-process step runs


@dataclass
class BuildPlan:
    options: BuildOptions
    src_dir: Path
    source_kind: str  # "git" (fetched by us or --src checkout) or "sdist"
    fetch: bool  # True when we fetch with git into the managed directory
    repo: str | None
    ref: str
    patch_ref: str
    arch_list: str
    patch_digest: str
    toolchain: toolchain.Toolchain
    jobs: Jobs
    env: dict[str, str]
    steps: list[Step]
    inputs: dict[str, Any]
    build_dir: Path
    log_hint: Path
    toolchain_error: str | None = None  # filled by dry_run(): the first failing check
    would_build: str | None = None  # filled by dry_run(): why a build would run (None: no-op)

    def to_json(self) -> dict[str, Any]:
        return {
            "src_dir": str(self.src_dir),
            "source_kind": self.source_kind,
            "fetch": self.fetch,
            "repo": self.repo,
            "ref": self.ref,
            "arch_list": self.arch_list,
            "patch_digest": self.patch_digest,
            "jobs": asdict(self.jobs),
            "env": redact_env(self.env),
            "inputs": self.inputs,
            "inputs_digest": stamp.inputs_digest(self.inputs),
            "steps": [
                {
                    "name": s.name,
                    "argv": redact_argv(s.argv) if s.argv else None,
                    "commands": [redact_argv(c) for c in s.commands],
                    "cwd": str(s.cwd) if s.cwd else None,
                    "env": redact_env(s.env),
                    "note": s.note,
                }
                for s in self.steps
            ],
            "toolchain_error": self.toolchain_error,
            "would_build": self.would_build,
        }


def build_dir() -> Path:
    return paths.state_dir() / "build"


def series_digest() -> str:
    from turbo import patching

    return patching.series_digest()


def _pretend_version(pins: Pins, commit: str) -> str | None:
    """A shallow single-commit clone has no tags, so setuptools-scm would call vLLM
    "0.1.dev1"; for the pinned commit we know its real describe."""
    if commit == pins.vllm.commit:
        return f"{pins.vllm.describe}+g{commit[:9]}"
    return None


def make_plan(
    opts: BuildOptions,
    pins: Pins,
    host: Host | None = None,
    tc: toolchain.Toolchain | None = None,
) -> BuildPlan:
    """Everything the build will do, decided up front. Reads the machine, changes nothing."""
    h = host or Host()
    if opts.target not in toolchain.TARGETS:
        raise TurboError(
            "--target",
            f"unknown target {opts.target!r}",
            f"Use one of: {', '.join(toolchain.TARGETS)}.",
        )
    for name, value in opts.overrides.items():
        if name not in OVERRIDES:
            raise TurboError(
                "local source override",
                f"unknown name {name!r}",
                f"Use one of: {', '.join(OVERRIDES)}.",
            )
        if not Path(value).is_dir():
            raise TurboError(
                f"--{name.replace('_', '-')}-src {value}",
                "is not a directory",
                "Point it at an unpacked source tree of that project.",
            )
    tc = tc or toolchain.quick_probe(pins, python=opts.python, target=opts.target, host=h)
    if opts.src is not None:
        tree = source.use_tree(opts.src, opts.ref)
        src_dir, kind, ref, fetch, repo = tree.path, tree.kind, tree.ref, False, None
    else:
        ref = source.require_commit_hash(opts.ref or pins.vllm.commit)
        src_dir, kind, fetch, repo = paths.vllm_src_dir(), "git", True, opts.repo or pins.vllm.repo
    arch = opts.arch_list or pins.toolchain.arch_list
    patch_ref = opts.patch_ref or ref
    digest = series_digest()
    jobs = host_jobs(pins, h, max_jobs=opts.max_jobs, nvcc_threads=opts.nvcc_threads)
    bdir = build_dir()
    overrides = {OVERRIDES[k]: str(Path(v).absolute()) for k, v in sorted(opts.overrides.items())}

    env: dict[str, str] = {
        "VLLM_TARGET_DEVICE": opts.target,
        # Our own setup.cfg addition: a persistent CMake build directory (see module doc).
        "DIST_EXTRA_CONFIG": str(bdir / f"setup-{opts.target}.cfg"),
        "FETCHCONTENT_BASE_DIR": str(bdir / "deps"),
        **overrides,
    }
    if opts.target == "cuda":
        env.update(
            {
                "TORCH_CUDA_ARCH_LIST": arch,
                "MAX_JOBS": str(jobs.max_jobs),
                "NVCC_THREADS": str(jobs.nvcc_threads),
                # vLLM's setup.py adds ccache as the compiler launcher when it is on PATH.
                "CCACHE_DIR": str(toolchain.ccache_dir()),
                "CCACHE_MAXSIZE": pins.build.ccache_max_size,
                "CCACHE_BASEDIR": str(src_dir),
            }
        )
        if tc.nvcc and not (h.env.get("CUDA_HOME") or h.env.get("CUDA_PATH")):
            env["CUDA_HOME"] = str(Path(tc.nvcc).parent.parent)
    if kind == "git":
        pretend = _pretend_version(pins, ref)
        if pretend:
            env["SETUPTOOLS_SCM_PRETEND_VERSION_FOR_VLLM"] = pretend

    py = opts.python
    steps: list[Step] = [
        Step(
            "check toolchain",
            None,
            note=(
                f"target {opts.target}: torch {pins.toolchain.torch} with CUDA "
                f"{pins.toolchain.cuda}, "
                "nvcc 13.x, ptxas accepting sm_121a, gcc, cmake >= 3.26, ninja, "
                f"{pins.build.disk_gb:.0f} GB free"
                if opts.target == "cuda"
                else f"target {opts.target}: torch importable, {pins.build.disk_gb:.0f} GB free"
            ),
        )
    ]
    if fetch:
        part = src_dir.with_name(src_dir.name + ".partial")
        steps.append(
            Step(
                "fetch vLLM",
                None,
                part,
                commands=source.fetch_argv(str(repo), ref),
                note=f"only this commit (depth 1); HEAD must be {ref}, then {part.name} "
                f"is renamed to {src_dir.name}; an existing checkout at {ref[:12]} "
                "is reused",
            )
        )
    else:
        steps.append(Step("use source tree", None, note=f"{kind} tree {src_dir} at {ref}"))
    steps += [
        Step(
            "apply patch series",
            None,
            src_dir,
            note=f"series {digest[:16]}, patches for {patch_ref[:12]}: all or nothing; a tree "
            "with an older series is reverted first",
        ),
        Step(
            "use the environment's torch",
            [py, "use_existing_torch.py"],
            src_dir,
            note="strips vLLM's torch pins from requirements/ and pyproject.toml",
        ),
    ]
    in_pixi = bool(h.env.get("PIXI_ENVIRONMENT_NAME"))
    use_pip = opts.pip_deps if opts.pip_deps is not None else not in_pixi
    runtime_file = "cuda.txt" if opts.target == "cuda" else "common.txt"
    if use_pip:
        steps.append(
            Step(
                "install build requirements",
                [
                    py,
                    "-m",
                    "pip",
                    "install",
                    "-r",
                    str(bdir / "build-requirements.txt"),
                    "-c",
                    str(bdir / "constraints.txt"),
                ],
                src_dir,
                note=f"requirements/build.txt minus the tools the environment provides; the "
                f"constraint holds torch at {tc.torch or pins.toolchain.torch}",
            )
        )
        if opts.runtime_deps:
            steps.append(
                Step(
                    "install runtime requirements",
                    [
                        py,
                        "-m",
                        "pip",
                        "install",
                        "-r",
                        f"requirements/{runtime_file}",
                        "-c",
                        str(bdir / "constraints.txt"),
                    ],
                    src_dir,
                )
            )
    else:
        files = ["requirements/build.txt"]
        if opts.runtime_deps:
            files.insert(0, f"requirements/{runtime_file}")
        steps.append(
            Step(
                "check requirements",
                None,
                src_dir,
                note=f"{' + '.join(files)} of the tree against pixi.toml's declared "
                "[pypi-dependencies] and the installed versions; no network, nothing installed "
                "(any difference stops here; --pip-deps installs them with pip instead)",
                commands=[],
            )
        )
    steps.append(
        Step(
            "build and install vLLM",
            [
                py,
                "-m",
                "pip",
                "install",
                "-v",
                "--no-build-isolation",
                "--no-deps",
                "--force-reinstall",
                ".",
            ],
            src_dir,
            dict(env),
            note="progress is parsed from ninja's [N/M] lines",
        )
    )
    if opts.target == "cuda":
        steps.append(
            Step(
                "check the extension loads",
                [py, "-c", "import torch; " + "; ".join(f"import {m}" for m in EXTENSIONS)],
                bdir,
            )
        )
        steps.append(
            Step(
                "list cubin targets",
                [tc.cuobjdump or "cuobjdump", "--list-elf", "<each vllm/*.so>"],
                src_dir,
                note=f"GB10 needs one of {', '.join(GB10_CUBINS)}",
            )
        )
    else:
        steps.append(
            Step(
                "check vLLM imports",
                [py, "-c", "import vllm, json; print(json.dumps(vllm.__version__))"],
                bdir,
            )
        )
    # The checks run in the build dir: from the state dir, `import vllm` would find the
    # checkout's own vllm/ directory (cwd is on sys.path) instead of the installed package.
    steps.append(Step("write build stamp", None, note=str(paths.stamp_path())))

    inputs: dict[str, Any] = {
        "commit": ref,
        "source_kind": kind,
        "src_dir": str(src_dir),
        "patch_digest": digest,
        "patch_ref": patch_ref,
        "arch_list": arch if opts.target == "cuda" else None,
        "target": opts.target,
        "torch": tc.torch,
        "torch_cuda": tc.torch_cuda,
        "cuda": tc.cuda,
        "python": tc.python_version,
        "machine": tc.machine,
        "overrides": overrides,
    }
    return BuildPlan(
        opts,
        src_dir,
        kind,
        fetch,
        repo,
        ref,
        patch_ref,
        arch,
        digest,
        tc,
        jobs,
        env,
        steps,
        inputs,
        bdir,
        paths.log_dir() / "build-vllm-<time>.log",
    )


def dry_run(opts: BuildOptions, pins: Pins, host: Host | None = None) -> BuildPlan:
    """The plan plus what a real run would decide: whether it builds, and whether the toolchain
    checks pass. Runs only read-only probes."""
    h = host or Host()
    plan = make_plan(opts, pins, h)
    try:
        toolchain.check_toolchain(
            pins,
            python=opts.python,
            target=opts.target,
            host=h,
            need_disk_gb=None if opts.target == "cuda" else 1.0,
        )
    except TurboError as err:
        plan.toolchain_error = "a real run would stop here: " + err.line()
    plan.would_build = _why_build(plan, stamp.read_stamp(), opts.force)
    return plan


def _why_build(plan: BuildPlan, old: Mapping[str, Any] | None, force: bool) -> str | None:
    why = "--force" if force else stamp.unchanged(old, plan.inputs)
    if why is None and old is not None:
        why = _tree_intact(plan, old)
    return why


def render_plan(plan: BuildPlan) -> str:
    """The --dry-run text: every step with its argv, working directory and environment."""
    lines = [
        f"vLLM {plan.ref} ({plan.source_kind}) -> {plan.src_dir}",
        f"would build: {plan.would_build}"
        if plan.would_build
        else "up to date: a real run would do nothing (the stamp matches these inputs)",
        f"toolchain: {plan.toolchain_error or 'all checks pass'}",
        f"target {plan.options.target}, arch list {plan.arch_list}, "
        f"patch series {plan.patch_digest[:16]}",
        f"jobs: MAX_JOBS={plan.jobs.max_jobs} NVCC_THREADS={plan.jobs.nvcc_threads} "
        f"({plan.jobs.rule})",
        f"log: {plan.log_hint}",
        "",
        "build environment (on top of the current one):",
    ]
    lines += [f"  {k}={v}" for k, v in sorted(redact_env(plan.env).items())]
    lines.append("")
    for i, s in enumerate(plan.steps, 1):
        lines.append(f"{i:2d}. {s.name}")
        for argv in ([s.argv] if s.argv else []) + s.commands:
            lines.append(f"    $ {shlex.join(redact_argv(argv))}")
        if s.cwd:
            lines.append(f"    in {s.cwd}")
        if s.note:
            lines.append(f"    ({s.note})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- progress
@dataclass
class Progress:
    done: int
    total: int
    eta_s: float | None

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 0.0
        eta = "" if self.eta_s is None else f", ETA {format_duration(self.eta_s)}"
        return f"[{self.done}/{self.total}] {pct:5.1f}%{eta}"


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class NinjaProgress:
    """Steps done / total and an ETA from ninja's ``[N/M]`` lines.

    The ETA is the mean rate since the current count started; a new total (CMake's FetchContent
    sub-builds print their own small counts first) restarts the estimate.
    """

    _STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = 0
        self.done = 0
        self._t0 = 0.0
        self._d0 = 0

    def feed(self, line: str) -> Progress | None:
        m = self._STEP.match(line)
        if not m:
            return None
        done, total = int(m.group(1)), int(m.group(2))
        now = self.clock()
        if total != self.total or done < self.done:
            self.total, self._t0, self._d0 = total, now, done
        self.done = done
        eta = None
        elapsed = now - self._t0
        if done > self._d0 and elapsed > 0:
            eta = (total - done) * elapsed / (done - self._d0)
        return Progress(done, total, eta)


# --------------------------------------------------------------------------- failure analysis
def oom_killed(lines: list[str]) -> bool:
    return any(p.search(line) for line in lines for p in OOM_PATTERNS)


def error_summary(lines: list[str], limit: int = 12) -> list[str]:
    """The last lines that say what went wrong (not the pip noise that follows them)."""
    hits = [ln.rstrip() for ln in lines if _ERROR_LINE.search(ln) and "-Werror" not in ln]
    return (hits or [ln.rstrip() for ln in lines if ln.strip()])[-limit:]


def failure_error(step: str, lines: list[str], log: Path, jobs: Jobs | None) -> TurboError:
    if oom_killed(lines):
        lower = max(1, (jobs.max_jobs // 2) if jobs else 1)
        return TurboError(
            f"build step '{step}'",
            f"a compiler was killed for lack of memory (MAX_JOBS={jobs.max_jobs if jobs else '?'})",
            f"Re-run with --max-jobs {lower} (it resumes); full log: {log}",
        )
    last = error_summary(lines, 1)
    return TurboError(
        f"build step '{step}'",
        f"failed: {last[0] if last else 'no output'}",
        f"The last error lines are above; full log: {log}. Re-run to resume.",
    )


# --------------------------------------------------------------------------- running
@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build per state directory: two would fight over the tree and the stamp."""
    paths.state_dir().mkdir(parents=True, exist_ok=True)
    with (paths.state_dir() / "build.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise TurboError(
                "build-vllm",
                f"another build is running in {paths.state_dir()}",
                "Wait for it or stop it.",
            ) from exc
        yield


Echo = Callable[[str], None]


def run_step(
    step: Step,
    log: TaskLog,
    echo: Echo,
    *,
    verbose: bool = False,
    jobs: Jobs | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Run one argv step, streaming its output to the log; progress lines go to ``echo``."""
    assert step.argv is not None
    log.write(f"$ {' '.join(redact_argv(step.argv))}  (in {step.cwd})")
    if step.env:
        log.write("env: " + json.dumps(redact_env(step.env), sort_keys=True))
    tail: deque[str] = deque(maxlen=2000)
    progress = NinjaProgress(clock)
    last_print = 0.0
    try:
        proc = subprocess.Popen(
            step.argv,
            cwd=step.cwd,
            env={**os.environ, **step.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise TurboError(
            f"build step '{step.name}'",
            f"cannot start {step.argv[0]} ({exc})",
            "Check the toolchain (`invoke doctor`).",
        ) from exc
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            if verbose:
                echo(line.rstrip())
            p = progress.feed(line)
            if p is not None and not verbose:
                now = clock()
                if now - last_print >= 5.0 or p.done == p.total:
                    echo(f"  {step.name}: {p.line()}")
                    last_print = now
        rc = proc.wait()
    except BaseException:
        # Ctrl-C reached the child too (same process group); give it time to stop cleanly.
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    lines = list(tail)
    if rc != 0:
        for ln in error_summary(lines):
            echo(f"  | {ln}")
        raise failure_error(step.name, lines, log.path, jobs)
    return lines


def _write_requirements(plan: BuildPlan) -> None:
    """build.txt without torch (use_existing_torch.py strips it) and without the tools the
    environment already has: pip's cmake/ninja would shadow the pixi environment's own."""
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    keep_out = {"torch", "torchvision", "torchaudio"}
    if plan.options.target == "cuda":
        keep_out |= {"cmake", "ninja"}
    reqs = []
    for raw in (plan.src_dir / "requirements" / "build.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() if line else ""
        if line and name not in keep_out:
            reqs.append(line)
    (plan.build_dir / "build-requirements.txt").write_text("\n".join(reqs) + "\n")
    torch = plan.toolchain.torch
    (plan.build_dir / "constraints.txt").write_text(
        f"# keep the environment's torch: a build against another torch would not load\n"
        f"torch=={torch}\n"
    )
    cfg = Path(plan.env["DIST_EXTRA_CONFIG"])
    cmake_dir = plan.build_dir / f"cmake-{plan.options.target}"
    cfg.write_text(f"[build_ext]\nbuild_temp = {cmake_dir}\n")


def check_requirements(plan: BuildPlan, log: TaskLog, echo: Echo) -> dict[str, Any]:
    """The tree's own requirement files against pixi.toml's declaration and the installed set;
    any difference stops the build with one line naming each package."""
    from turbo import activation
    from turbo import vllm_requirements as vr

    files = list(vr.BUILD_FILES)
    if plan.options.runtime_deps:
        files.insert(0, f"requirements/{'cuda' if plan.options.target == 'cuda' else 'common'}.txt")
    reqs = vr.tree_requirements(plan.src_dir, files)
    environment = os.environ.get("PIXI_ENVIRONMENT_NAME") or "default"
    declared = vr.declared(activation.load_manifest(), environment)
    installed = vr.probe_installed(plan.options.python)
    platform = vr.current_platform(plan.toolchain.machine or os.uname().machine)
    diffs = vr.differences(
        reqs,
        platform,
        declared_specs=declared,
        installed=installed.versions,
        requires_of=installed.requires_of,
    )
    summary = {"files": files, "checked": len(reqs), "differences": [d.text() for d in diffs]}
    log.write(json.dumps(summary))
    if diffs:
        raise TurboError(
            "vLLM's requirements vs pixi.toml",
            vr.one_line(diffs),
            "Declare them in pixi.toml's [pypi-dependencies] and run `pixi install`, or re-run "
            "with --pip-deps to let pip install them (pixi puts its versions back later).",
        )
    echo(f"  {len(reqs)} requirements of {', '.join(files)}: all declared and installed")
    return summary


def cubin_targets(cuobjdump: str, so_files: list[Path]) -> dict[str, list[str]]:
    """sm_* targets of the cubins in each shared object (``cuobjdump --list-elf``)."""
    out: dict[str, list[str]] = {}
    for so in so_files:
        proc = subprocess.run(
            [cuobjdump, "--list-elf", str(so)], capture_output=True, text=True, check=False
        )
        found = re.findall(r"\.(sm_\d+[af]?)\.cubin", proc.stdout)
        out[so.name] = sorted(set(found))
    return out


def gb10_ok(targets: Mapping[str, list[str]]) -> bool:
    return any(t in GB10_CUBINS for ts in targets.values() for t in ts)


@dataclass
class BuildResult:
    noop: bool
    reason: str
    stamp: dict[str, Any]
    seconds: float
    log: Path | None = None


def _tree_intact(plan: BuildPlan, old: Mapping[str, Any]) -> str | None:
    if not plan.src_dir.is_dir():
        return f"source tree {plan.src_dir} is gone"
    if plan.source_kind == "git" and source.head_commit(plan.src_dir) != plan.ref:
        return f"source tree {plan.src_dir} is no longer at {plan.ref[:12]}"
    if plan.toolchain.vllm_installed != old.get("vllm_version"):
        return (
            f"installed vLLM is {plan.toolchain.vllm_installed}, the stamp says "
            f"{old.get('vllm_version')}"
        )
    return None


def build(
    opts: BuildOptions, pins: Pins, *, host: Host | None = None, echo: Echo = print
) -> BuildResult:
    """Build (or say why nothing needs building). Raises TurboError on any failure, after
    recording it in the stamp."""
    t0 = time.monotonic()
    h = host or Host()
    with build_lock():
        plan = make_plan(opts, pins, h)
        old = stamp.read_stamp()
        why = _why_build(plan, old, opts.force)
        if why is None and old is not None:
            dt = time.monotonic() - t0
            echo(
                f"vLLM {plan.ref[:12]} is already built with these inputs (stamp "
                f"{paths.stamp_path()}, finished {old.get('finished_at')}); nothing to do "
                f"({dt:.2f} s). Use --force to rebuild."
            )
            return BuildResult(True, "up to date", dict(old), dt)
        echo(f"building: {why}")
        tc = toolchain.check_toolchain(
            pins,
            python=opts.python,
            target=opts.target,
            host=h,
            need_disk_gb=None if opts.target == "cuda" else 1.0,
        )
        plan.toolchain = tc
        return _execute(plan, pins, t0, echo)


def _base_stamp(plan: BuildPlan) -> dict[str, Any]:
    tc = plan.toolchain
    return {
        "commit": plan.ref,
        "source": {"kind": plan.source_kind, "path": str(plan.src_dir), "repo": plan.repo},
        "patch_digest": plan.patch_digest,
        "arch_list": plan.inputs["arch_list"],
        "target": plan.options.target,
        "torch": tc.torch,
        "cuda": tc.torch_cuda,
        "nvcc": tc.cuda,
        "python": tc.python_version,
        "machine": tc.machine,
        "toolchain": tc.versions(),
        "flags": {
            "MAX_JOBS": plan.jobs.max_jobs,
            "NVCC_THREADS": plan.jobs.nvcc_threads,
            "jobs_rule": plan.jobs.rule,
            "env": redact_env(plan.env),
            "ccache": bool(tc.ccache),
        },
        "inputs": plan.inputs,
        "inputs_digest": stamp.inputs_digest(plan.inputs),
    }


def _execute(plan: BuildPlan, pins: Pins, t0: float, echo: Echo) -> BuildResult:
    base = _base_stamp(plan)
    started = stamp.now_iso()
    stamp.write_stamp({**base, "result": stamp.BUILDING, "started_at": started})
    log = TaskLog("build-vllm")
    echo(f"log: {log.path}")
    record: dict[str, Any] = {**base, "started_at": started, "log": str(log.path)}
    current = "start"
    try:
        for step in plan.steps:
            current = step.name
            echo(f"==> {step.name}")
            log.write(f"==> {step.name}")
            if step.name == "check toolchain":
                log.write(json.dumps(plan.toolchain.versions()))
            elif step.name == "fetch vLLM":
                tree = source.fetch_commit(
                    str(plan.repo), plan.ref, plan.src_dir, on_tree_change=_revert_patches
                )
                log.write(f"source {tree.path} at {tree.commit} (HEAD verified)")
            elif step.name == "use source tree":
                log.write(f"source {plan.src_dir} ({plan.source_kind}) at {plan.ref}")
            elif step.name == "apply patch series":
                record["patches"] = _apply_patches(plan, log, echo)
            elif step.name == "install build requirements":
                _write_requirements(plan)
                run_step(step, log, echo, verbose=plan.options.verbose)
            elif step.name == "check requirements":
                _write_requirements(plan)
                record["requirements"] = check_requirements(plan, log, echo)
            elif step.name == "list cubin targets":
                so_files = sorted((plan.src_dir / "vllm").rglob("*.so"))
                cubins = cubin_targets(plan.toolchain.cuobjdump or "cuobjdump", so_files)
                record["cubins"] = {"targets": cubins, "gb10": gb10_ok(cubins)}
                log.write(json.dumps(record["cubins"]))
                if not record["cubins"]["gb10"]:
                    raise TurboError(
                        "cubin check",
                        f"no shared object carries a GB10 cubin ({', '.join(GB10_CUBINS)})",
                        f"Check TORCH_CUDA_ARCH_LIST and the arch patches; log: {log.path}",
                    )
            elif step.name == "write build stamp":
                pass
            elif step.argv is not None:
                lines = run_step(step, log, echo, verbose=plan.options.verbose, jobs=plan.jobs)
                if step.name == "check vLLM imports":
                    record["vllm_import_version"] = json.loads(lines[-1])
                if step.name == "check the extension loads":
                    record["extension_load"] = {"ok": True, "modules": list(EXTENSIONS)}
        # The installed distribution's version (with its local tag), as the no-op check reads it.
        record["vllm_version"] = toolchain.quick_probe(
            pins, python=plan.options.python, target=plan.options.target
        ).vllm_installed
        record.update(
            result=stamp.OK, finished_at=stamp.now_iso(), duration_s=round(time.monotonic() - t0, 1)
        )
        stamp.write_stamp(record)
        echo(
            f"built vLLM {record['vllm_version']} in "
            f"{format_duration(time.monotonic() - t0)}; stamp {paths.stamp_path()}"
        )
        return BuildResult(False, "built", record, time.monotonic() - t0, log.path)
    except (TurboError, KeyboardInterrupt) as exc:
        err = "interrupted" if isinstance(exc, KeyboardInterrupt) else exc.line()
        record.update(
            result=stamp.FAILED,
            failed_step=current,
            error=err,
            finished_at=stamp.now_iso(),
            duration_s=round(time.monotonic() - t0, 1),
        )
        stamp.write_stamp(record)
        log.write(f"failed at {current}: {err}")
        raise
    finally:
        log.close()


def _revert_patches(tree: Path) -> None:
    from turbo import patching

    # The tree is about to move to another commit: its patched files go either way.
    patching.revert_series(tree, force=True)


def _apply_patches(plan: BuildPlan, log: TaskLog, echo: Echo) -> dict[str, Any]:
    """All-or-nothing via the patch engine. A tree carrying an older series (or an interrupted
    apply) is first reverted to pristine, so changing a patch and re-running just works."""
    from turbo import patching

    state = stamp.read_stamp(plan.src_dir / patching.STATE_FILE)
    if state is not None and (
        state.get("series_digest") != plan.patch_digest or state.get("status") != "applied"
    ):
        rev = patching.revert_series(plan.src_dir)
        for msg in rev.messages:
            log.write(msg)
        echo(f"  reverted the previous series ({', '.join(rev.reverted) or 'none'})")
    report = patching.apply_series(plan.src_dir, plan.patch_ref)
    for msg in report.messages:
        log.write(msg)
        echo(f"  {msg}")
    return {
        "applied": report.applied + report.already_applied,
        "skipped": report.skipped,
        "newly_applied": report.applied,
    }
