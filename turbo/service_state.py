"""What systemd says about our units: systemctl, each unit's state, doctor's "service" row."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from turbo import proc
from turbo.console import render_table
from turbo.service_unit import SYSTEM, USER, Systemctl, installed_units, parse_unit, target

NO_SYSTEMCTL = "unknown (systemctl not available)"


def run_systemctl(args: list[str]) -> tuple[int, str]:
    exe = shutil.which("systemctl")
    if exe is None:
        return 127, "systemctl not found"
    res = proc.capture([exe, *args], timeout=30)
    if res.fault:
        return 1, res.error
    return res.rc, (res.stdout.strip() or res.stderr.strip())


@dataclass(frozen=True)
class UnitState:
    unit: str
    profile: str
    scope: str
    path: str
    active: str
    enabled: str


def states(
    environ: Mapping[str, str] | None = None,
    systemctl: Systemctl | None = None,
    unit_dir: str = "",
) -> list[UnitState]:
    """Our units in both scopes, with systemd's view when systemctl can be asked."""
    env = os.environ if environ is None else environ
    found: list[UnitState] = []
    seen: set[Path] = set()
    for scope in (USER, SYSTEM):
        tgt = target(scope, env, unit_dir)
        ask = systemctl
        if ask is None and tgt.real and shutil.which("systemctl"):
            ask = run_systemctl
        for path in installed_units(tgt):
            if path in seen:
                continue
            seen.add(path)
            keys = parse_unit(path.read_text(encoding="utf-8", errors="replace"))
            unit_scope = (keys.get("X-Turbo-Scope") or [scope])[0]
            profile = (keys.get("X-Turbo-Profile") or ["?"])[0]
            active = enabled = NO_SYSTEMCTL
            if ask is not None:
                t = target(unit_scope, env, unit_dir)
                active = _state(ask, t.systemctl("is-active", path.name))
                enabled = _state(ask, t.systemctl("is-enabled", path.name))
            found.append(UnitState(path.name, profile, unit_scope, str(path), active, enabled))
    return found


def _state(systemctl: Systemctl, args: list[str]) -> str:
    rc, text = systemctl(args)
    word = text.splitlines()[-1].strip() if text else ""
    # is-active/is-enabled print one word; anything longer is systemctl explaining a failure
    # (in a container: "System has not been booted with systemd").
    if word and " " not in word:
        return word
    return f"unknown ({word or f'exit {rc}'})"


def render_states(found: list[UnitState]) -> str:
    if not found:
        return "no vllm-turbo units installed (invoke service.install --profile P)"
    return render_table(
        ["unit", "profile", "scope", "active", "enabled", "file"],
        [(s.unit, s.profile, s.scope, s.active, s.enabled, s.path) for s in found],
    )


def doctor_row(
    environ: Mapping[str, str] | None = None, systemctl: Systemctl | None = None
) -> tuple[str, str, str, str] | None:
    """(name, status, detail, fix) for doctor, or None when no unit is installed."""
    found = states(environ, systemctl)
    if not found:
        return None
    parts = [
        f"{s.unit} ({s.scope}): {s.active}, {s.enabled}"
        if s.active != NO_SYSTEMCTL
        else f"{s.unit} ({s.scope}): installed at {s.path} (no systemctl to ask)"
        for s in found
    ]
    failed = [s for s in found if s.active == "failed"]
    starting = [s for s in found if s.active in ("activating", "reloading")]
    if failed:
        s = failed[0]
        flag = "--user " if s.scope == USER else ""
        return ("service", "fail", "; ".join(parts), f"Read `journalctl {flag}-u {s.unit} -e`.")
    if starting:
        return ("service", "warn", "; ".join(parts), "Starting: a first start takes 10-15 min.")
    return ("service", "pass", "; ".join(parts), "")
