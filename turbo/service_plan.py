"""The unit `service.install` would write: composed from serve's resolution of the profile.

Serve's own resolution (the command runs it) hands this piece a :class:`Served`; what the unit
adds is the install shell's environment, the timeouts around serve's own waits, the Ray head it
starts after and the notes a person should read before enabling it.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from turbo import paths
from turbo.errors import TurboError, UsageError
from turbo.redact import REDACTED, SECRET_ENV, is_secret_key
from turbo.service_unit import (
    RAY_START_TIMEOUT_S,
    START_MARGIN_S,
    SYSTEM,
    USER,
    InstallRequest,
    Served,
    Spec,
    Systemctl,
    Target,
    installed_units,
    is_ours,
    read_env_file,
    render_unit,
    systemd_version,
    unit_name,
)

# Non-secret variables that change what serve does; carried from the install shell into the
# unit so it runs what `invoke serve --dry-run` showed there. The seed's names (MODEL, PORT, ...)
# come from the profiles file's [env_names].
CARRIED_ENV = (
    "CONDA_PREFIX",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDACXX",
    "TRITON_PTXAS_PATH",
    "TORCH_CUDA_ARCH_LIST",
    "TURBO_HOME",
    "TURBO_CACHE",
    "VLLM_SRC",
    "HF_HOME",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_IB_GID_INDEX",
    "VLLM_NCCL_SO_PATH",
)


def refuse_secret_sets(sets: Sequence[str]) -> None:
    for item in sets:
        key = item.partition("=")[0].strip().removeprefix("--")
        if is_secret_key(key.removeprefix("env.")):
            raise UsageError(
                f"--set {key}",
                "would write a secret into the unit file",
                "Put it in the environment file instead (service.install --dry-run shows where).",
            )


def _unit_path_env(environ: Mapping[str, str], python: str) -> str:
    # The install shell's PATH (pixi's activation puts the environment's bin/ first), with the
    # interpreter's own bin/ in front and relative entries dropped (systemd has no cwd for them).
    entries = [str(Path(python).parent), *environ.get("PATH", "").split(os.pathsep)]
    entries += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    seen: list[str] = []
    for e in entries:
        if e.startswith("/") and e not in seen:
            seen.append(e)
    return os.pathsep.join(seen)


def carried_environment(
    environ: Mapping[str, str], python: str, env_names: Sequence[str]
) -> dict[str, str]:
    env = {"PATH": _unit_path_env(environ, python), "PYTHONUNBUFFERED": "1"}
    for key in (*CARRIED_ENV, *env_names):
        value = environ.get(key)
        if value and not is_secret_key(key):
            env[key] = value
    return env


def repo_owner(repo: Path) -> str:
    import pwd

    try:
        return pwd.getpwuid(repo.stat().st_uid).pw_name
    except (KeyError, OSError):
        return "root"


@dataclass(frozen=True)
class Installed:
    """What install would write or wrote: the plain data behind its output."""

    spec: Spec
    unit_path: Path
    unit_text: str
    env_path: Path
    env_keys: dict[str, str]  # key -> "***" (set) or "" (not set); values never leave here
    env_exists: bool
    notes: list[str]


def compose(
    req: InstallRequest,
    served: Served,
    tgt: Target,
    environ: Mapping[str, str],
    *,
    python: str,
    systemctl: Systemctl,
) -> Installed:
    """The unit and its environment file for ``req``, as serve resolved its profile."""
    o = req.serve
    unit = unit_name(req.name or req.profile)
    repo = paths.repo_root()
    env = carried_environment(environ, python, served.env_names)
    exec_start = [python, "-m", "invoke", "--search-root", str(repo), *o.argv(req.profile)]
    exec_stop = _exec_stop(req.profile, served, env["PATH"])
    requires: list[str] = []
    if served.kind == "serve" and served.uses_ray:
        requires = [unit_name(req.requires or "tp2-head")] if req.requires != "" else []
    start_timeout, stop_timeout = _timeouts(req, served)
    where = f" on port {served.port}" if served.api else ""
    spec = Spec(
        unit=unit,
        profile=req.profile,
        kind=served.kind,
        api=served.api,
        scope=req.scope,
        description=f"vllm-turbo {req.profile}{where}: {served.description}",
        exec_start=exec_start,
        working_dir=str(repo),
        environment=env,
        env_file=str(tgt.env_path(unit)),
        requires=requires,
        exec_stop=exec_stop,
        run_as=repo_owner(repo) if req.scope == SYSTEM else None,
        start_timeout_s=start_timeout,
        stop_timeout_s=stop_timeout,
        systemd_version=systemd_version(systemctl),
        memlock_unlimited=req.scope == SYSTEM and served.cluster,
    )
    env_path = tgt.env_path(unit)
    exists = env_path.exists()
    current = read_env_file(env_path) if exists and is_ours(env_path) else {}
    source = current if exists else environ
    keys = {k: (REDACTED if source.get(k) else "") for k in SECRET_ENV}
    notes = _notes(req, served, tgt, spec)
    return Installed(spec, tgt.unit_path(unit), render_unit(spec), env_path, keys, exists, notes)


def _exec_stop(profile: str, served: Served, path: str) -> list[str]:
    """``ray stop`` for the units that start Ray; nothing for a serving unit."""
    if served.kind == "serve":
        return []
    ray = shutil.which("ray", path=path)
    if ray is None:
        raise TurboError(
            f"service {profile}",
            "ray is not on this environment's PATH",
            "Install from the cluster environment: `pixi run -e cluster invoke "
            f"service.install --profile {profile} ...`.",
        )
    return [ray, "stop"]


def _timeouts(req: InstallRequest, served: Served) -> tuple[int, int]:
    """systemd's start and stop limits: serve's own waits plus a margin, so serve gives up first."""
    sec = served.serve_section
    o = req.serve
    health = float(o.health_timeout or sec.get("health_timeout_s", 1800))
    warm = float(sec.get("warmup_timeout_s", 600)) if o.warmup else 0.0
    start_timeout = (
        math.ceil(health + warm + START_MARGIN_S) if served.kind == "serve" else RAY_START_TIMEOUT_S
    )
    stop_timeout = math.ceil(float(sec.get("stop_timeout_s", 60)) + 30)
    return start_timeout, stop_timeout


def _notes(req: InstallRequest, served: Served, tgt: Target, spec: Spec) -> list[str]:
    notes: list[str] = []
    # One Spark's unified memory holds one model: a second serving unit on this node fails
    # its memory fit (or its port) and loops in restarts.
    others = [
        p.name
        for p in installed_units(tgt)
        if p.name != spec.unit
        and "X-Turbo-Kind=serve" in p.read_text(errors="replace").splitlines()
    ]
    if served.kind == "serve" and others:
        notes.append(
            f"{', '.join(others)} also serve(s) a model on this node: one Spark holds one; "
            "enable only one of them"
        )
    if spec.requires:
        notes.append(
            f"{spec.unit} starts after {spec.requires[0]} (Ray head) and fails its preflight, "
            "then retries, until the worker node has joined"
        )
    if req.scope == USER and served.cluster:
        notes.append(
            "a user unit cannot raise the locked-memory limit NCCL's RDMA needs; "
            "check `ulimit -l` is unlimited or install with --system"
        )
    if served.failing:
        notes.append(
            f"serve's preflight fails here now ({', '.join(served.failing)}): the unit retries "
            f"until it passes; `invoke serve --profile {req.profile} --dry-run` shows why"
        )
    return notes
