"""The build's plan: which source, which environment, which steps, decided before anything runs.

Reads the machine (the tree's HEAD, memory, cores) and changes nothing, so the plan a dry run
prints is the plan a real run executes. The toolchain facts come in from the caller's one probe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo import patching, paths, source, stamp
from turbo.build_types import (
    EXTENSIONS,
    GB10_CUBINS,
    OVERRIDES,
    TARGETS,
    BuildOptions,
    BuildPlan,
    Jobs,
    Step,
    StepKind,
    Toolchain,
)
from turbo.errors import TurboError
from turbo.host import Host
from turbo.pins import Pins


# --------------------------------------------------------------------------- MAX_JOBS rule
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
    return Jobs(max_jobs=jobs, nvcc_threads=threads, rule=rule)


def host_jobs(
    pins: Pins, host: Host, *, max_jobs: int | None = None, nvcc_threads: int | None = None
) -> Jobs:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    mem = host.meminfo_gb().get("MemAvailable", 8.0)
    return jobs_rule(cores, mem, pins, max_jobs=max_jobs, nvcc_threads=nvcc_threads)


# --------------------------------------------------------------------------- places
def build_dir() -> Path:
    return paths.state_dir() / "build"


def ccache_dir() -> Path:
    """ccache's store lives in the per-user cache so every checkout (and a rebuild after
    `rm -rf .turbo`) reuses it."""
    return paths.cache_dir() / "ccache"


def series_digest() -> str:
    return patching.series_digest()


# --------------------------------------------------------------------------- source
@dataclass(frozen=True)
class _Source:
    src_dir: Path
    kind: str  # "git" or "sdist"
    ref: str
    fetch: bool  # fetched with git into the managed directory
    repo: str | None


def check_options(opts: BuildOptions) -> None:
    """The target and the local-source overrides, refused in one line before anything runs."""
    if opts.target not in TARGETS:
        raise TurboError(
            "--target",
            f"unknown target {opts.target!r}",
            f"Use one of: {', '.join(TARGETS)}.",
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


def _choose_source(opts: BuildOptions, pins: Pins) -> _Source:
    if opts.src is not None:
        tree = source.use_tree(opts.src, opts.ref)
        return _Source(tree.path, tree.kind, tree.ref, fetch=False, repo=None)
    ref = source.require_commit_hash(opts.ref or pins.vllm.commit)
    return _Source(paths.vllm_src_dir(), "git", ref, fetch=True, repo=opts.repo or pins.vllm.repo)


def _pretend_version(pins: Pins, commit: str) -> str | None:
    """A shallow single-commit clone has no tags, so setuptools-scm would call vLLM
    "0.1.dev1"; for the pinned commit we know its real describe."""
    if commit == pins.vllm.commit:
        return f"{pins.vllm.describe}+g{commit[:9]}"
    return None


# --------------------------------------------------------------------------- environment
def _build_env(
    opts: BuildOptions,
    pins: Pins,
    host: Host,
    tc: Toolchain,
    src: _Source,
    arch: str,
    jobs: Jobs,
    overrides: dict[str, str],
) -> dict[str, str]:
    bdir = build_dir()
    env: dict[str, str] = {
        "VLLM_TARGET_DEVICE": opts.target,
        # A persistent CMake build directory, through setup.cfg's [build_ext] build_temp: a
        # re-run after an interruption resumes there.
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
                "CCACHE_DIR": str(ccache_dir()),
                "CCACHE_MAXSIZE": pins.build.ccache_max_size,
                "CCACHE_BASEDIR": str(src.src_dir),
            }
        )
        if tc.nvcc and not (host.env.get("CUDA_HOME") or host.env.get("CUDA_PATH")):
            env["CUDA_HOME"] = str(Path(tc.nvcc).parent.parent)
    if src.kind == "git":
        pretend = _pretend_version(pins, src.ref)
        if pretend:
            env["SETUPTOOLS_SCM_PRETEND_VERSION_FOR_VLLM"] = pretend
    return env


# --------------------------------------------------------------------------- steps
def _toolchain_step(opts: BuildOptions, pins: Pins) -> Step:
    if opts.target == "cuda":
        note = (
            f"target {opts.target}: torch {pins.toolchain.torch} with CUDA "
            f"{pins.toolchain.cuda}, "
            "nvcc 13.x, ptxas accepting sm_121a, gcc, cmake >= 3.26, ninja, "
            f"{pins.build.disk_gb:.0f} GB free"
        )
    else:
        note = f"target {opts.target}: torch importable, {pins.build.disk_gb:.0f} GB free"
    return Step("check toolchain", None, note=note, kind=StepKind.CHECK_TOOLCHAIN)


def _source_steps(src: _Source, digest: str, patch_ref: str, python: str) -> list[Step]:
    """Get the tree, patch it, and make it build against the environment's torch."""
    if src.fetch:
        part = src.src_dir.with_name(src.src_dir.name + ".partial")
        get = Step(
            "fetch vLLM",
            None,
            part,
            commands=source.fetch_argv(str(src.repo), src.ref),
            note=f"only this commit (depth 1); HEAD must be {src.ref}, then {part.name} "
            f"is renamed to {src.src_dir.name}; an existing checkout at {src.ref[:12]} "
            "is reused",
            kind=StepKind.FETCH_SOURCE,
        )
    else:
        get = Step(
            "use source tree",
            None,
            note=f"{src.kind} tree {src.src_dir} at {src.ref}",
            kind=StepKind.USE_TREE,
        )
    return [
        get,
        Step(
            "apply patch series",
            None,
            src.src_dir,
            note=f"series {digest[:16]}, patches for {patch_ref[:12]}: all or nothing; a tree "
            "with an older series is reverted first",
            kind=StepKind.APPLY_PATCHES,
        ),
        Step(
            "use the environment's torch",
            [python, "use_existing_torch.py"],
            src.src_dir,
            note="strips vLLM's torch pins from requirements/ and pyproject.toml",
            kind=StepKind.RUN,
        ),
    ]


def _pip_requirement_steps(
    opts: BuildOptions, pins: Pins, tc: Toolchain, src_dir: Path, runtime_file: str
) -> list[Step]:
    bdir = build_dir()
    py = opts.python
    constraints = ["-c", str(bdir / "constraints.txt")]
    steps = [
        Step(
            "install build requirements",
            [py, "-m", "pip", "install", "-r", str(bdir / "build-requirements.txt"), *constraints],
            src_dir,
            note=f"requirements/build.txt minus the tools the environment provides; the "
            f"constraint holds torch at {tc.torch or pins.toolchain.torch}",
            kind=StepKind.INSTALL_BUILD_REQUIREMENTS,
        )
    ]
    if opts.runtime_deps:
        steps.append(
            Step(
                "install runtime requirements",
                [py, "-m", "pip", "install", "-r", f"requirements/{runtime_file}", *constraints],
                src_dir,
                kind=StepKind.RUN,
            )
        )
    return steps


def _requirement_steps(
    opts: BuildOptions, pins: Pins, host: Host, tc: Toolchain, src_dir: Path
) -> list[Step]:
    """Inside pixi the requirements are only checked (pixi.toml declares them); outside, or
    with --pip-deps, pip installs them."""
    in_pixi = bool(host.env.get("PIXI_ENVIRONMENT_NAME"))
    use_pip = opts.pip_deps if opts.pip_deps is not None else not in_pixi
    runtime_file = "cuda.txt" if opts.target == "cuda" else "common.txt"
    if use_pip:
        return _pip_requirement_steps(opts, pins, tc, src_dir, runtime_file)
    files = ["requirements/build.txt"]
    if opts.runtime_deps:
        files.insert(0, f"requirements/{runtime_file}")
    return [
        Step(
            "check requirements",
            None,
            src_dir,
            note=f"{' + '.join(files)} of the tree against pixi.toml's declared "
            "[pypi-dependencies] and the installed versions; no network, nothing installed "
            "(any difference stops here; --pip-deps installs them with pip instead)",
            commands=[],
            kind=StepKind.CHECK_REQUIREMENTS,
        )
    ]


def _compile_step(python: str, src_dir: Path, env: dict[str, str]) -> Step:
    argv = [python, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps"]
    return Step(
        "build and install vLLM",
        [*argv, "--force-reinstall", "."],
        src_dir,
        dict(env),
        note="progress is parsed from ninja's [N/M] lines",
        kind=StepKind.RUN,
    )


def _verify_steps(opts: BuildOptions, tc: Toolchain, src_dir: Path) -> list[Step]:
    """What proves the install works. The checks run in the build dir: from the state dir,
    `import vllm` would find the checkout's own vllm/ directory (cwd is on sys.path) instead
    of the installed package."""
    py, bdir = opts.python, build_dir()
    if opts.target != "cuda":
        return [
            Step(
                "check vLLM imports",
                [py, "-c", "import vllm, json; print(json.dumps(vllm.__version__))"],
                bdir,
                kind=StepKind.CHECK_IMPORTS,
            )
        ]
    return [
        Step(
            "check the extension loads",
            [py, "-c", "import torch; " + "; ".join(f"import {m}" for m in EXTENSIONS)],
            bdir,
            kind=StepKind.CHECK_EXTENSION,
        ),
        Step(
            "list cubin targets",
            [tc.cuobjdump or "cuobjdump", "--list-elf", "<each vllm/*.so>"],
            src_dir,
            note=f"GB10 needs one of {', '.join(GB10_CUBINS)}",
            kind=StepKind.LIST_CUBINS,
        ),
    ]


# --------------------------------------------------------------------------- the plan
def _inputs(
    opts: BuildOptions,
    tc: Toolchain,
    src: _Source,
    digest: str,
    patch_ref: str,
    arch: str,
    overrides: dict[str, str],
) -> dict[str, Any]:
    """What the stamp compares: a change in any of these means a rebuild."""
    return {
        "commit": src.ref,
        "source_kind": src.kind,
        "src_dir": str(src.src_dir),
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


def make_plan(opts: BuildOptions, pins: Pins, host: Host, tc: Toolchain) -> BuildPlan:
    """Everything the build will do, decided up front from the options, the pins, the machine
    and the toolchain probe ``tc``. Reads the machine, changes nothing."""
    check_options(opts)
    src = _choose_source(opts, pins)
    arch = opts.arch_list or pins.toolchain.arch_list
    patch_ref = opts.patch_ref or src.ref
    digest = series_digest()
    jobs = host_jobs(pins, host, max_jobs=opts.max_jobs, nvcc_threads=opts.nvcc_threads)
    overrides = {OVERRIDES[k]: str(Path(v).absolute()) for k, v in sorted(opts.overrides.items())}
    env = _build_env(opts, pins, host, tc, src, arch, jobs, overrides)
    steps = [
        _toolchain_step(opts, pins),
        *_source_steps(src, digest, patch_ref, opts.python),
        *_requirement_steps(opts, pins, host, tc, src.src_dir),
        _compile_step(opts.python, src.src_dir, env),
        *_verify_steps(opts, tc, src.src_dir),
        Step("write build stamp", None, note=str(paths.stamp_path()), kind=StepKind.WRITE_STAMP),
    ]
    inputs = _inputs(opts, tc, src, digest, patch_ref, arch, overrides)
    return BuildPlan(
        options=opts,
        src_dir=src.src_dir,
        source_kind=src.kind,
        fetch=src.fetch,
        repo=src.repo,
        ref=src.ref,
        patch_ref=patch_ref,
        arch_list=arch,
        patch_digest=digest,
        toolchain=tc,
        jobs=jobs,
        env=env,
        steps=steps,
        inputs=inputs,
        inputs_digest=stamp.inputs_digest(inputs),
        build_dir=build_dir(),
        log_hint=paths.log_dir() / "build-vllm-<time>.log",
    )
