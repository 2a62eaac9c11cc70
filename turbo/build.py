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
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, assert_never

from turbo import build_steps, patching, paths, source, stamp, toolchain
from turbo.build_reqs import check_requirements as check_requirements
from turbo.build_reqs import write_requirements
from turbo.build_run import Echo as Echo
from turbo.build_run import NinjaProgress as NinjaProgress
from turbo.build_run import Progress as Progress
from turbo.build_run import error_summary as error_summary
from turbo.build_run import failure_error as failure_error
from turbo.build_run import format_duration as format_duration
from turbo.build_run import oom_killed as oom_killed
from turbo.build_run import run_step as run_step
from turbo.build_steps import build_dir as build_dir
from turbo.build_steps import check_options
from turbo.build_steps import host_jobs as host_jobs
from turbo.build_steps import jobs_rule as jobs_rule
from turbo.build_steps import series_digest as series_digest
from turbo.build_types import EXTENSIONS as EXTENSIONS
from turbo.build_types import GB10_CUBINS as GB10_CUBINS
from turbo.build_types import OVERRIDES as OVERRIDES
from turbo.build_types import BuildOptions as BuildOptions
from turbo.build_types import BuildPlan as BuildPlan
from turbo.build_types import BuildResult as BuildResult
from turbo.build_types import Jobs as Jobs
from turbo.build_types import Step as Step
from turbo.build_types import StepKind as StepKind
from turbo.build_types import Toolchain
from turbo.console import TaskLog
from turbo.cubins import cubin_targets as cubin_targets
from turbo.cubins import gb10_ok as gb10_ok
from turbo.errors import TurboError
from turbo.host import Host
from turbo.outcome import Outcome, done
from turbo.pins import Pins
from turbo.redact import redact_argv, redact_env


# --------------------------------------------------------------------------- the plan
def make_plan(
    opts: BuildOptions,
    pins: Pins,
    host: Host | None = None,
    tc: Toolchain | None = None,
) -> BuildPlan:
    """Everything the build will do, decided up front. Reads the machine, changes nothing.
    ``tc``: the toolchain probe when the caller has one (else this probes, once)."""
    h = host or Host()
    check_options(opts)
    tc = tc or toolchain.quick_probe(pins, python=opts.python, target=opts.target, host=h)
    return build_steps.make_plan(opts, pins, h, tc)


@dataclass(frozen=True)
class DryRun:
    """The plan plus what a real run would decide: whether it builds (``would_build``: why,
    None when it would do nothing) and the first toolchain check that would stop it."""

    plan: BuildPlan
    would_build: str | None
    toolchain_error: str | None

    def to_json(self) -> dict[str, Any]:
        return plan_json(self.plan, self.would_build, self.toolchain_error)


def _toolchain_verdict(opts: BuildOptions, pins: Pins, h: Host, probed: Toolchain) -> Toolchain:
    """Every toolchain check on top of this command's probe (a CPU build needs little disk)."""
    return toolchain.check_toolchain(
        pins,
        python=opts.python,
        target=opts.target,
        host=h,
        need_disk_gb=None if opts.target == "cuda" else 1.0,
        probed=probed,
    )


def preview(opts: BuildOptions, pins: Pins, host: Host | None = None) -> DryRun:
    """The plan plus what a real run would decide: whether it builds, and whether the toolchain
    checks pass. Runs only read-only probes."""
    h = host or Host()
    plan = make_plan(opts, pins, h)
    error = None
    try:
        _toolchain_verdict(opts, pins, h, plan.toolchain)
    except TurboError as err:
        error = "a real run would stop here: " + err.line()
    return DryRun(plan, _why_build(plan, stamp.read_stamp(), opts.force), error)


def plan_json(
    plan: BuildPlan, would_build: str | None = None, toolchain_error: str | None = None
) -> dict[str, Any]:
    """The plan as JSON, secrets redacted (``build-vllm --dry-run --json``)."""
    return {
        "src_dir": str(plan.src_dir),
        "source_kind": plan.source_kind,
        "fetch": plan.fetch,
        "repo": plan.repo,
        "ref": plan.ref,
        "arch_list": plan.arch_list,
        "patch_digest": plan.patch_digest,
        "jobs": asdict(plan.jobs),
        "env": redact_env(plan.env),
        "inputs": plan.inputs,
        "inputs_digest": plan.inputs_digest,
        "steps": [
            {
                "name": s.name,
                "argv": redact_argv(s.argv) if s.argv else None,
                "commands": [redact_argv(c) for c in s.commands],
                "cwd": str(s.cwd) if s.cwd else None,
                "env": redact_env(s.env),
                "note": s.note,
            }
            for s in plan.steps
        ],
        "toolchain_error": toolchain_error,
        "would_build": would_build,
    }


def render_plan(plan: BuildPlan | DryRun) -> str:
    """The --dry-run text: every step with its argv, working directory and environment."""
    dry = plan if isinstance(plan, DryRun) else DryRun(plan, None, None)
    p = dry.plan
    lines = [
        f"vLLM {p.ref} ({p.source_kind}) -> {p.src_dir}",
        f"would build: {dry.would_build}"
        if dry.would_build
        else "up to date: a real run would do nothing (the stamp matches these inputs)",
        f"toolchain: {dry.toolchain_error or 'all checks pass'}",
        f"target {p.options.target}, arch list {p.arch_list}, patch series {p.patch_digest[:16]}",
        f"jobs: MAX_JOBS={p.jobs.max_jobs} NVCC_THREADS={p.jobs.nvcc_threads} ({p.jobs.rule})",
        f"log: {p.log_hint}",
        "",
        "build environment (on top of the current one):",
    ]
    lines += [f"  {k}={v}" for k, v in sorted(redact_env(p.env).items())]
    lines.append("")
    for i, s in enumerate(p.steps, 1):
        lines.append(f"{i:2d}. {s.name}")
        for argv in ([s.argv] if s.argv else []) + s.commands:
            lines.append(f"    $ {shlex.join(redact_argv(argv))}")
        if s.cwd:
            lines.append(f"    in {s.cwd}")
        if s.note:
            lines.append(f"    ({s.note})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- deciding
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


def _why_build(plan: BuildPlan, old: Mapping[str, Any] | None, force: bool) -> str | None:
    why = "--force" if force else stamp.unchanged(old, plan.inputs)
    if why is None and old is not None:
        why = _tree_intact(plan, old)
    return why


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
            return BuildResult(noop=True, reason="up to date", stamp=dict(old), seconds=dt)
        echo(f"building: {why}")
        checked = _toolchain_verdict(opts, pins, h, plan.toolchain)
        return _execute(plan, checked, h, echo, t0)


def command(opts: BuildOptions, pins: Pins, *, dry_run: bool = False, say: Echo = print) -> Outcome:
    """``build-vllm``: the plan (``dry_run``: text, or JSON as data) or the build itself, its
    progress to ``say`` and the result as data (noop, seconds, stamp)."""
    paths.require_writable("build-vllm", paths.state_dir())
    if opts.src is not None:
        paths.require_writable(
            "build-vllm --src", opts.src, "The tree is patched in place: pass a copy you can write."
        )
    if dry_run:
        dry = preview(opts, pins)
        return done(render_plan(dry), dry.to_json())
    result = build(opts, pins, echo=say)
    return done(
        data={"noop": result.noop, "seconds": round(result.seconds, 3), "stamp": result.stamp}
    )


def _base_stamp(plan: BuildPlan, tc: Toolchain) -> dict[str, Any]:
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
        "inputs_digest": plan.inputs_digest,
    }


@dataclass(frozen=True)
class _Run:
    """One build being run: its plan, the checked toolchain, where it reports."""

    plan: BuildPlan
    checked: Toolchain  # the quick probe plus every tool the checks found
    host: Host
    echo: Echo
    log: TaskLog


def _execute(plan: BuildPlan, checked: Toolchain, host: Host, echo: Echo, t0: float) -> BuildResult:
    base = _base_stamp(plan, checked)
    started = stamp.now_iso()
    stamp.write_stamp({**base, "result": stamp.BUILDING, "started_at": started})
    log = TaskLog("build-vllm")
    echo(f"log: {log.path}")
    run = _Run(plan, checked, host, echo, log)
    record: dict[str, Any] = {**base, "started_at": started, "log": str(log.path)}
    current = "start"
    try:
        for step in plan.steps:
            current = step.name
            echo(f"==> {step.name}")
            log.write(f"==> {step.name}")
            record.update(do_step(step, run))
        # The installed distribution's version (with its local tag), as the no-op check reads it.
        record["vllm_version"] = toolchain.installed_vllm(plan.options.python, run.host)
        record.update(
            result=stamp.OK, finished_at=stamp.now_iso(), duration_s=round(time.monotonic() - t0, 1)
        )
        stamp.write_stamp(record)
        echo(
            f"built vLLM {record['vllm_version']} in "
            f"{format_duration(time.monotonic() - t0)}; stamp {paths.stamp_path()}"
        )
        return BuildResult(
            noop=False, reason="built", stamp=record, seconds=time.monotonic() - t0, log=log.path
        )
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


def do_step(step: Step, run: _Run) -> dict[str, Any]:
    """Carry out one step by its kind; returns what it adds to the stamp."""
    plan, log, echo = run.plan, run.log, run.echo
    verbose = plan.options.verbose
    match step.kind:
        case StepKind.CHECK_TOOLCHAIN:
            log.write(json.dumps(run.checked.versions()))
        case StepKind.FETCH_SOURCE:
            tree = source.fetch_commit(
                str(plan.repo), plan.ref, plan.src_dir, on_tree_change=_revert_patches
            )
            log.write(f"source {tree.path} at {tree.commit} (HEAD verified)")
        case StepKind.USE_TREE:
            log.write(f"source {plan.src_dir} ({plan.source_kind}) at {plan.ref}")
        case StepKind.APPLY_PATCHES:
            return {"patches": _apply_patches(plan, log, echo)}
        case StepKind.INSTALL_BUILD_REQUIREMENTS:
            write_requirements(plan)
            run_step(step, log, echo, verbose=verbose)
        case StepKind.CHECK_REQUIREMENTS:
            write_requirements(plan)
            return {"requirements": check_requirements(plan, log, echo)}
        case StepKind.RUN:
            run_step(step, log, echo, verbose=verbose, jobs=plan.jobs)
        case StepKind.CHECK_IMPORTS:
            lines = run_step(step, log, echo, verbose=verbose, jobs=plan.jobs)
            return {"vllm_import_version": json.loads(lines[-1])}
        case StepKind.CHECK_EXTENSION:
            run_step(step, log, echo, verbose=verbose, jobs=plan.jobs)
            return {"extension_load": {"ok": True, "modules": list(EXTENSIONS)}}
        case StepKind.LIST_CUBINS:
            return {"cubins": _list_cubins(plan, run.checked, log)}
        case StepKind.WRITE_STAMP:
            pass  # the stamp is written once every step has passed
        case unknown:
            assert_never(unknown)
    return {}


def _list_cubins(plan: BuildPlan, checked: Toolchain, log: TaskLog) -> dict[str, Any]:
    """The cubin targets of every shared object the build made; GB10 code must be there."""
    so_files = sorted((plan.src_dir / "vllm").rglob("*.so"))
    cubins = cubin_targets(checked.cuobjdump or "cuobjdump", so_files)
    found = {"targets": cubins, "gb10": gb10_ok(cubins)}
    log.write(json.dumps(found))
    if not found["gb10"]:
        raise TurboError(
            "cubin check",
            f"no shared object carries a GB10 cubin ({', '.join(GB10_CUBINS)})",
            f"Check TORCH_CUDA_ARCH_LIST and the arch patches; log: {log.path}",
        )
    return found


# --------------------------------------------------------------------------- patches
def _revert_patches(tree: Path) -> None:
    # The tree is about to move to another commit: its patched files go either way.
    patching.revert_series(tree, force=True)


def _apply_patches(plan: BuildPlan, log: TaskLog, echo: Echo) -> dict[str, Any]:
    """All-or-nothing via the patch engine. A tree carrying an older series (or an interrupted
    apply) is first reverted to pristine, so changing a patch and re-running just works."""
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
