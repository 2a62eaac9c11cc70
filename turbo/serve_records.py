"""Pid files: what serve records about a server it started, and how stop finds it again.

One JSON file per server under the run directory (``serve-PORT.json``, or the profile's name
for a Ray node). A record names the process by pid *and* the kernel's start time of that pid,
so a recycled pid, a corrupt file or a crafted one can never make stop signal a stranger.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from turbo import paths
from turbo.errors import TurboError
from turbo.jsonfile import read_json, write_json_atomic
from turbo.redact import redact_argv
from turbo.serve_types import Plan


def pid_file(plan: Plan) -> Path:
    stem = f"serve-{plan.port}" if plan.api else plan.profile
    return paths.run_dir() / f"{stem}.json"


def start_time(pid: int) -> str | None:
    """The kernel's start time of a pid: tells a live server from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def zombie(pid: int) -> bool:
    """Exited but not yet reaped (or gone): nothing left to signal."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def record(plan: Plan, pid: int, log: Path) -> Path:
    """The pid file of a server process serve started."""
    p = pid_file(plan)
    write_json_atomic(
        p,
        {
            "pid": pid,
            "start_time": start_time(pid),
            "profile": plan.profile,
            "kind": plan.kind,
            "host": plan.host,
            "port": plan.port,
            "api": plan.api,
            "served_name": plan.served_name,
            "log": str(log),
            "argv": redact_argv(plan.argv),
            "started": time.time(),
        },
    )
    return p


def record_ray(plan: Plan, log: Path) -> Path:
    """The pid file of a Ray node: Ray runs its own daemons, so stop calls `ray stop`."""
    p = pid_file(plan)
    write_json_atomic(
        p,
        {
            "kind": plan.kind,
            "profile": plan.profile,
            "log": str(log),
            "argv": redact_argv(plan.argv),
        },
    )
    return p


def _usable_record(rec: dict[str, Any] | None) -> bool:
    """A pid file as serve writes it: a serve record names a real process (pid above 1, its
    start time), so a corrupt or crafted file can never make stop signal init or a stranger."""
    if rec is None:
        return False
    if rec.get("kind") != "serve":
        return True
    pid = rec.get("pid")
    return (
        isinstance(pid, int)
        and not isinstance(pid, bool)
        and pid > 1
        and pid != os.getpid()
        and isinstance(rec.get("start_time"), str)
    )


def _leads_own_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def running(corrupt: list[Path] | None = None, prune: bool = True) -> list[dict[str, Any]]:
    """Recorded servers that are still alive (stale pid files are removed unless ``prune`` is
    False). Files that are not usable records are left alone and listed in ``corrupt``."""
    out: list[dict[str, Any]] = []
    d = paths.run_dir()
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        rec = read_json(f)
        if rec is None or not _usable_record(rec):
            if corrupt is not None:
                corrupt.append(f)
            continue
        rec["file"] = str(f)
        if rec.get("kind") != "serve":
            out.append(rec)
            continue
        pid = int(rec["pid"])
        if start_time(pid) is not None and start_time(pid) == rec.get("start_time"):
            if not _leads_own_session(pid):
                # serve starts vLLM in a session of its own; a live process that is not a
                # session leader is not ours, whatever the file says: never signal its group.
                if corrupt is not None:
                    corrupt.append(f)
                continue
            out.append(rec)
        elif prune:
            f.unlink(missing_ok=True)
    return out


def corrupt_pid_files(files: list[Path]) -> TurboError:
    more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
    return TurboError(
        f"pid file {files[0]}{more}",
        "is not a record written by serve (corrupt or edited), so it cannot say which "
        "process to stop",
        "If a server still runs, find it with `pgrep -af 'vllm serve'` and end it; then "
        "delete the file.",
    )
