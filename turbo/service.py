"""`service.*`: install, list and remove the systemd units that run the product's own `serve`.

The unit itself is plain data (turbo/service_unit.py), composed from serve's own resolution of
the profile (turbo/service_plan.py); systemd's view of installed units is turbo/service_state.py.
This command resolves the profile with serve's own pieces (turbo/serve_plan.py and
turbo/serve_preflight.py), refuses what must not be written, writes the files and drives
systemctl where the unit directory is systemd's own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING

from turbo.errors import TurboError, UsageError
from turbo.outcome import Outcome, done
from turbo.service_plan import Installed, compose, refuse_secret_sets
from turbo.service_state import (
    doctor_row,
    render_states,
    run_systemctl,
    states,
)
from turbo.service_unit import (
    SYSTEM,
    USER,
    InstallRequest,
    Served,
    ServeOptions,
    Spec,
    Systemctl,
    Target,
    env_file_text,
    is_ours,
    parse_unit,
    read_env_file,
    render_unit,
    split_exec,
    target,
    unit_environment,
    unit_name,
    write_private,
    write_unit_file,
)

__all__ = [
    "SYSTEM",
    "USER",
    "InstallRequest",
    "Installed",
    "ServeOptions",
    "Spec",
    "Systemctl",
    "Target",
    "doctor_row",
    "install",
    "parse_unit",
    "plan_install",
    "read_env_file",
    "render_states",
    "render_unit",
    "request",
    "split_exec",
    "states",
    "status",
    "target",
    "uninstall",
    "unit_environment",
    "unit_name",
]

if TYPE_CHECKING:
    from turbo.pins import Pins
    from turbo.profiles import ProfileBook

Out = Callable[[str], None]


def plan_install(
    req: InstallRequest,
    environ: Mapping[str, str],
    *,
    python: str = sys.executable,
    systemctl: Systemctl = run_systemctl,
) -> Installed:
    """Resolve the profile as serve does, then compose the unit and its env file."""
    from turbo.pins import load_pins
    from turbo.profiles import load_book

    tgt = target(req.scope, environ, req.unit_dir)
    unit_name(req.name or req.profile)
    refuse_secret_sets(req.serve.sets)
    book = load_book()
    served = _served(req, load_pins(), book, environ)
    return compose(req, served, tgt, environ, python=python, systemctl=systemctl)


def _served(
    req: InstallRequest, pins: Pins, book: ProfileBook, environ: Mapping[str, str]
) -> Served:
    """serve's own plan and preflight for the unit's options: a bad profile, key or missing
    --head fails here, now, and the checks that fail on this host become a note."""
    from turbo import serve_plan, serve_preflight
    from turbo.profiles import Overrides
    from turbo.serve_types import NetOptions
    from turbo.stamp import read_stamp

    o = req.serve
    # No words after `--` reach a unit, so there is nothing for serve's extra_args to absorb.
    ov = Overrides(
        port=o.port or None,
        model=o.model or None,
        host=o.host or None,
        sets=o.sets,
        head=o.head or None,
        node_ip=o.node_ip or None,
    )
    net = NetOptions(
        ifname=o.ifname or None,
        hca=tuple(h for h in o.hca.split(",") if h),
        gid_index=o.gid_index if o.gid_index >= 0 else None,
    )
    built = read_stamp()
    probe = serve_preflight.Probe()
    planned = serve_plan.plan_profile(
        req.profile,
        pins,
        ov,
        book=book,
        environ=environ,
        built=built,
        net=net,
        host=probe.host,
        sysfs=probe.sysfs,
        ipv4=probe.ipv4,
    )
    plan = planned.plan
    checks = serve_preflight.preflight(
        plan,
        planned.profile,
        book,
        probe,
        environ,
        pins.model.size_gb,
        planned.roce_error,
        built,
        planned.build_digest,
    )
    return Served(
        kind=plan.kind,
        api=plan.api,
        port=plan.port,
        description=plan.description,
        uses_ray=plan.uses_ray,
        cluster=planned.profile.cluster,
        failing=[c.name for c in checks if c.status == "fail"],
        env_names=list(book.env_names),
        serve_section=book.section("serve"),
    )


def render_install(inst: Installed, tgt: Target, dry_run: bool) -> str:
    verb = "would write" if dry_run else "wrote"
    if inst.spec.scope == SYSTEM and dry_run and tgt.real:
        verb += "; needs root"
    env_state = "kept as it is" if inst.env_exists else ("would create" if dry_run else "created")
    lines = [
        f"{inst.spec.scope} unit: {inst.unit_path} ({verb})",
        f"environment file: {inst.env_path} (0600, {env_state}); keys: "
        + ", ".join(f"{k}={v}" if v else f"{k} (not set)" for k, v in inst.env_keys.items()),
        "",
        inst.unit_text.rstrip("\n"),
        "",
    ]
    lines += [f"note: {n}" for n in inst.notes]
    ctl = "systemctl" + (" --user" if tgt.scope == USER else "")
    lines += [
        "next:",
        f"  {ctl} daemon-reload",
        f"  {ctl} enable --now {inst.spec.unit}",
        f"  journalctl {'--user ' if tgt.scope == USER else ''}-u {inst.spec.unit} -f",
    ]
    if tgt.scope == USER:
        lines.append("  loginctl enable-linger $USER   # start at boot, without a login")
    return "\n".join(lines)


def request(
    profile: str,
    serve: ServeOptions,
    *,
    user: bool,
    system: bool,
    name: str = "",
    unit_dir: str = "",
    requires: str | None = None,
    extra: str = "",
) -> InstallRequest:
    """The install request for the command line's options (user unit unless --system)."""
    if user and system:
        raise UsageError("service.install", "--user and --system both given", "Pick one.")
    if extra:
        raise UsageError(
            "service.install",
            "extra vLLM flags after -- are not carried into a unit",
            "Use --set key=value for profile settings.",
        )
    return InstallRequest(profile, SYSTEM if system else USER, name, unit_dir, requires, serve)


def install(
    req: InstallRequest,
    *,
    dry_run: bool,
    enable: bool = False,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
    systemctl: Systemctl = run_systemctl,
    python: str = sys.executable,
    out: Out | None = None,
) -> Outcome:
    """Write (or, dry run, show) the unit and its environment file; ``out`` also gets the text."""
    env = os.environ if environ is None else environ
    tgt = target(req.scope, env, req.unit_dir)
    inst = plan_install(req, env, python=python, systemctl=systemctl)
    if not dry_run:
        _refuse_to_install(req, inst, tgt, os.geteuid() if euid is None else euid)
        _write(inst, tgt, env, enable, systemctl)
    text = render_install(inst, tgt, dry_run)
    if out is not None:
        out(text)
    data = {
        "unit": inst.spec.unit,
        "unit_path": str(inst.unit_path),
        "unit_text": inst.unit_text,
        "env_file": str(inst.env_path),
        "env_keys": inst.env_keys,
        "spec": asdict(inst.spec),
        "notes": inst.notes,
        "dry_run": dry_run,
    }
    return done(text, data)


def _refuse_to_install(req: InstallRequest, inst: Installed, tgt: Target, uid: int) -> None:
    """No root for a system unit, a file we did not write, or a missing Ray head: refuse."""
    if req.scope == SYSTEM and tgt.real and uid != 0:
        raise TurboError(
            "service.install --system",
            f"writing {tgt.unit_dir} needs root",
            "Run it with sudo (keep this environment: `sudo env PATH=$PATH invoke "
            "service.install --system ...`), or use a user unit (the default).",
        )
    if inst.unit_path.exists() and not is_ours(inst.unit_path):
        raise TurboError(
            f"unit {inst.unit_path}",
            "exists and was not written by vllm-turbo",
            "Choose another --name, or move that file away yourself.",
        )
    if inst.env_exists and not is_ours(inst.env_path):
        raise TurboError(
            f"environment file {inst.env_path}",
            "exists and was not written by vllm-turbo",
            "Choose another --name, or move that file away yourself.",
        )
    for dep in inst.spec.requires:
        if not tgt.unit_path(dep).exists():
            raise TurboError(
                f"service {req.profile}",
                f"needs {dep} (the Ray head on this node), which is not installed in "
                f"{tgt.unit_dir}",
                "Install it first: `invoke service.install --profile tp2-head`.",
            )


def _write(
    inst: Installed, tgt: Target, env: Mapping[str, str], enable: bool, systemctl: Systemctl
) -> None:
    """The environment file (kept when it exists: it holds the user's secrets), then the unit."""
    if not inst.env_exists:
        write_private(inst.env_path, env_file_text(env))
    else:
        inst.env_path.chmod(0o600)
    write_unit_file(inst.unit_path, inst.unit_text)
    if not tgt.real:
        return
    systemctl(tgt.systemctl("daemon-reload"))
    if enable:
        rc, text = systemctl(tgt.systemctl("enable", "--now", inst.spec.unit))
        if rc != 0:
            raise TurboError(
                f"systemctl enable --now {inst.spec.unit}",
                text.splitlines()[-1] if text else f"exit {rc}",
                "The unit is written; see `invoke service.status`.",
            )


def status(
    unit_dir: str = "",
    environ: Mapping[str, str] | None = None,
    systemctl: Systemctl | None = None,
) -> Outcome:
    """Our units in both scopes with systemd's active/enabled state."""
    found = states(environ, systemctl, unit_dir)
    return done(render_states(found), [asdict(s) for s in found])


def uninstall(
    name: str,
    scope: str,
    *,
    purge: bool,
    dry_run: bool,
    unit_dir: str = "",
    environ: Mapping[str, str] | None = None,
    systemctl: Systemctl = run_systemctl,
    out: Out | None = None,
) -> Outcome:
    """Stop, disable and remove one of our units; its environment file only with ``purge``.

    ``out`` sees each line as it happens; the outcome's text holds them all.
    """
    if not name:
        raise UsageError(
            "service.uninstall", "no unit named", "Pass --name NAME (see `invoke service.status`)."
        )
    env = os.environ if environ is None else environ
    tgt = target(scope, env, unit_dir)
    unit = unit_name(name)
    path, env_path = tgt.unit_path(unit), tgt.env_path(unit)
    if not path.exists():
        raise UsageError(
            f"unit {unit}",
            f"is not installed in {tgt.unit_dir}",
            "See `invoke service.status` for what is installed (--system for system units).",
        )
    if not is_ours(path):
        raise TurboError(
            f"unit {path}", "was not written by vllm-turbo", "Remove it yourself if you mean to."
        )
    remove_env = purge and env_path.exists()
    if remove_env and not is_ours(env_path):
        raise TurboError(
            f"environment file {env_path}",
            "was not written by vllm-turbo",
            "Remove it yourself if you mean to.",
        )
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if out is not None:
            out(line)

    verb = "would " if dry_run else ""
    if tgt.real:
        say(f"{verb}run: systemctl {' '.join(tgt.systemctl('disable', '--now', unit))}")
        if not dry_run:
            systemctl(tgt.systemctl("disable", "--now", unit))
    say(f"{verb}remove {path}")
    if remove_env:
        say(f"{verb}remove {env_path}")
    elif env_path.exists():
        say(f"kept {env_path} (it holds your secrets; --purge removes it)")
    if not dry_run:
        path.unlink()
        if remove_env:
            env_path.unlink()
        if tgt.real:
            systemctl(tgt.systemctl("daemon-reload"))
    return done("\n".join(lines))
