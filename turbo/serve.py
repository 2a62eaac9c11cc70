"""`serve` and `stop`: a profile becomes a plan, is checked, launched and supervised.

The command composes three pieces that never import each other: turbo/serve_plan.py (the
profile resolved into argv and env), turbo/serve_preflight.py (the checks, shared with doctor)
and turbo/serve_process.py (the launch and its supervision). ``stop`` ends what the pid files
of turbo/serve_records.py name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turbo import extra_args, paths, proc, serve_plan, serve_process, serve_records, serve_secrets
from turbo.checks import FAIL as FAIL
from turbo.checks import PASS as PASS
from turbo.checks import WARN as WARN
from turbo.checks import Check as Check
from turbo.errors import UsageError
from turbo.outcome import Outcome
from turbo.pins import Pins
from turbo.profiles import Overrides, Profile, ProfileBook, load_book
from turbo.redact import redact_argv, redact_env, register_secrets
from turbo.serve_preflight import Probe as Probe
from turbo.serve_preflight import build_check as build_check
from turbo.serve_preflight import first_failure as first_failure
from turbo.serve_preflight import model_problems as model_problems
from turbo.serve_preflight import preflight as preflight
from turbo.serve_preflight import render_checks
from turbo.serve_records import running as running
from turbo.serve_types import DETECT_NET
from turbo.serve_types import NetOptions as NetOptions
from turbo.serve_types import Out as Out
from turbo.serve_types import Plan as Plan
from turbo.serve_types import Supervision as Supervision
from turbo.stamp import read_stamp


@dataclass(frozen=True)
class Prepared:
    """A plan, the profile it came from, and the checks a launch of it must pass."""

    plan: Plan
    profile: Profile
    checks: list[Check]


def prepare(
    name: str,
    pins: Pins,
    overrides: Overrides | None = None,
    *,
    book: ProfileBook | None = None,
    probe: Probe | None = None,
    environ: Mapping[str, str] | None = None,
    net: NetOptions = DETECT_NET,
) -> Prepared:
    """Resolve the profile, detect the cluster network, build the plan and check it."""
    env = os.environ if environ is None else environ
    b = book or load_book()
    built = read_stamp()
    pr = probe or Probe()
    planned = serve_plan.plan_profile(
        name,
        pins,
        extra_args.absorb(overrides or Overrides()),
        book=b,
        environ=env,
        built=built,
        net=net,
        host=pr.host,
        sysfs=pr.sysfs,
        ipv4=pr.ipv4,
    )
    plan, prof = planned.plan, planned.profile
    checks = preflight(
        plan, prof, b, pr, env, pins.model.size_gb, planned.roce_error, built, planned.build_digest
    )
    return Prepared(plan, prof, checks)


def plan_view(plan: Plan) -> dict[str, Any]:
    """The redacted, printable form of a plan (what --dry-run --json shows)."""
    d = asdict(plan)
    d["argv"] = redact_argv(plan.argv)
    d["command"] = shlex.join(d["argv"])
    d["env"] = redact_env(plan.env)
    d["endpoint"] = serve_process.api_url(plan) if plan.api else None
    return d


def render_plan(prep: Prepared) -> str:
    p = plan_view(prep.plan)
    lines = [f"profile {p['profile']} ({p['kind']}): {p['description']}", "", "env:"]
    lines += [f"  {k}={v}" for k, v in p["env"].items()]
    lines += ["", "argv:", f"  {p['command']}"]
    if p["endpoint"]:
        lines += ["", f"endpoint: {p['endpoint']}"]
    for note in [*p["notes"], *((p["roce"] or {}).get("notes") or ())]:
        lines.append(f"note: {note}")
    lines += ["", "checks (a real launch stops at the first FAIL):", render_checks(prep.checks)]
    return "\n".join(lines)


def supervision(book: ProfileBook, health_timeout: float | None, warmup: bool) -> Supervision:
    sec = book.section("serve")
    return Supervision(
        health_timeout=float(health_timeout or sec.get("health_timeout_s", 1800)),
        health_interval=float(sec.get("health_interval_s", 2.0)),
        warmup=warmup,
        warmup_timeout=float(sec.get("warmup_timeout_s", 600)),
        stop_timeout=float(sec.get("stop_timeout_s", 60)),
    )


def launch(prep: Prepared, sup: Supervision, *, detach: bool, out: Out = print) -> int:
    """Fail on the first failed check (warnings are printed), then run the plan."""
    for note in prep.plan.notes:
        out(f"note: {note}")
    for c in prep.checks:
        if c.status == WARN:
            out(f"warning: {c.name}: {c.detail}. {c.fix}".rstrip())
    err = first_failure(prep.checks)
    if err is not None:
        raise err
    plan = prep.plan
    # Whatever vLLM prints of these (its argument log) is masked on screen and in logs.
    register_secrets(serve_secrets.secret_values(plan.argv, plan.env))
    if plan.kind != "serve":
        return serve_process.run_ray(plan, out)
    if detach:
        return serve_process.run_detached(plan, sup, out)
    return serve_process.run_foreground(plan, sup, out)


def command(
    profile: str,
    pins: Pins,
    overrides: Overrides,
    *,
    net: NetOptions,
    detach: bool,
    dry_run: bool,
    health_timeout: float | None,
    warmup: bool,
    say: Out = print,
) -> Outcome:
    """What `invoke serve` does after parsing its options. A dry run's outcome is the plan and
    its checks; a launch reports as it goes (``say``) and its outcome is vLLM's exit code."""
    book = load_book()
    prep = prepare(profile, pins, overrides, book=book, net=net)
    if dry_run:
        data = plan_view(prep.plan)
        data["checks"] = [asdict(c) for c in prep.checks]
        return Outcome(render_plan(prep), data)
    rc = launch(prep, supervision(book, health_timeout, warmup), detach=detach, out=say)
    return Outcome(code=rc)


# ------------------------------------------------------------------------------ stop
def _stop_ray(rec: dict[str, Any], out: Out) -> None:
    """`ray stop` ends a Ray node's daemons; its pid file goes with it."""
    # The `ray` that started the node (an adopted vLLM's), else the one on PATH.
    argv0 = str((rec.get("argv") or [""])[0])
    ray_exe = (
        argv0
        if Path(argv0).name == "ray" and Path(argv0).is_absolute() and Path(argv0).is_file()
        else shutil.which("ray")
    )
    rc = proc.capture([ray_exe, "stop"], timeout=None).rc if ray_exe else 127
    out(f"{rec.get('profile')}: ray stop (exit {rc})")
    Path(rec["file"]).unlink(missing_ok=True)


def _stop_server(rec: dict[str, Any], timeout: float, out: Out) -> None:
    """SIGTERM to the recorded process group; SIGKILL when it ignores that for ``timeout``.
    The pid file goes once the group is gone."""
    pid = int(rec["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        Path(rec["file"]).unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and serve_records.start_time(pid) is not None:
        if serve_records.zombie(pid):
            break
        time.sleep(0.2)
    if serve_records.start_time(pid) is not None and not serve_records.zombie(pid):
        os.killpg(pid, signal.SIGKILL)
        out(f"pid {pid} ignored SIGTERM for {timeout:.0f} s: killed")
    Path(rec["file"]).unlink(missing_ok=True)
    out(f"stopped {rec.get('profile')} (pid {pid}, port {rec.get('port')})")


def _would_stop(recs: list[dict[str, Any]], timeout: float, out: Out) -> None:
    for rec in recs:
        how = (
            "`ray stop`"
            if rec.get("kind") != "serve"
            else f"SIGTERM to process group {rec.get('pid')}, SIGKILL after {timeout:.0f} s"
        )
        out(f"would stop {rec.get('profile')} (port {rec.get('port')}): {how}")


def stop(
    port: int | None = None,
    everything: bool = False,
    timeout: float = 60.0,
    out: Out = print,
    dry_run: bool = False,
) -> int:
    """End recorded servers: SIGTERM to the process group, SIGKILL after ``timeout``.
    ``dry_run`` names what would be stopped and signals and removes nothing."""
    corrupt: list[Path] = []
    recs = running(corrupt, prune=not dry_run)
    if port is not None:
        recs = [r for r in recs if r.get("port") == port and r.get("kind") == "serve"]
    if not recs:
        if corrupt:
            raise serve_records.corrupt_pid_files(corrupt)
        out("nothing to stop: no server recorded in " + str(paths.run_dir()))
        return 0
    if len(recs) > 1 and not everything and port is None:
        listing = ", ".join(f"{r.get('profile')} (port {r.get('port')})" for r in recs)
        raise UsageError("stop", f"several are running: {listing}", "Pass --port N or --all.")
    if dry_run:
        _would_stop(recs, timeout, out)
    else:
        for rec in recs:
            if rec.get("kind") != "serve":
                _stop_ray(rec, out)
            else:
                _stop_server(rec, timeout, out)
    if corrupt:
        out(f"warning: {serve_records.corrupt_pid_files(corrupt).line()}")
    return 0


def stop_command(
    port: int | None, *, everything: bool, timeout: float, dry_run: bool, say: Out = print
) -> Outcome:
    """What `invoke stop` does: each server's end is reported as it happens (``say``)."""
    return Outcome(code=stop(port, everything, timeout, say, dry_run))
