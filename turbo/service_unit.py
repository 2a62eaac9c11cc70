"""The systemd unit and environment file that `service.install` writes, as plain data.

A unit holds no logic of its own: ExecStart is `python -m invoke serve --profile P ...` with the
options given at install, so preflight, the environment, vLLM's argv and signal handling stay
with serve. Serving profiles are ``Type=notify``: serve sends ``READY=1`` once ``/health``
answers and the warm-up request is done (turbo/notify.py), so units ordered after it start when
the model really answers. ``tp2-head``/``tp2-worker`` run `ray start`, which daemonises: their
units are ``Type=oneshot`` with ``RemainAfterExit=yes`` (active once Ray is up, Ray's processes
stay in the unit's cgroup, ``ray stop`` on stop).

Secrets never enter the unit: they go to an ``EnvironmentFile=`` created 0600. Every file we
write starts with :data:`MARK`; a unit or environment file without it is never overwritten or
removed. ``TURBO_SYSTEMD_DIR`` (or ``--unit-dir``) moves the unit directory, and
``TURBO_SERVICE_ENV_DIR`` the environment files, so tests never touch the real ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo.errors import UsageError
from turbo.redact import SECRET_ENV

# Runs `systemctl ARGS...`; returns (exit code, stdout). Tests hand in a fake.
Systemctl = Callable[[list[str]], tuple[int, str]]

MARK = "# Written by vllm-turbo (invoke service.install). Reinstall or uninstall with it."
PREFIX = "vllm-turbo-"
USER, SYSTEM = "user", "system"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# serve's exit code for bad input (UsageError): restarting cannot fix it.
USAGE_EXIT = 2
# serve's own wait for /health and the warm-up must end before systemd's start timeout, so the
# journal shows serve's message (with vLLM's log tail), not a bare "start timed out".
START_MARGIN_S = 120
RAY_START_TIMEOUT_S = 300


# ------------------------------------------------------------------------------ locations
@dataclass(frozen=True)
class Target:
    """Where one scope's units and environment files live."""

    scope: str
    unit_dir: Path
    env_dir: Path
    real: bool  # the directory systemd itself reads (daemon-reload and systemctl make sense)

    def unit_path(self, unit: str) -> Path:
        return self.unit_dir / unit

    def env_path(self, unit: str) -> Path:
        return self.env_dir / (unit.removesuffix(".service") + ".env")

    def systemctl(self, *args: str) -> list[str]:
        return (["--user"] if self.scope == USER else []) + list(args)


def target(scope: str, environ: Mapping[str, str], unit_dir: str = "") -> Target:
    """The unit and environment-file directories for ``scope``, honouring the overrides."""
    if scope not in (USER, SYSTEM):
        raise UsageError(
            "service scope", f"{scope!r} is not user or system", "Pass --user or --system."
        )
    override = unit_dir or environ.get("TURBO_SYSTEMD_DIR", "")
    env_override = environ.get("TURBO_SERVICE_ENV_DIR", "")
    if scope == USER:
        config = Path(
            environ.get("XDG_CONFIG_HOME") or Path(environ.get("HOME") or Path.home()) / ".config"
        )
        real_units, real_env = config / "systemd" / "user", config / "vllm-turbo"
    else:
        real_units, real_env = Path("/etc/systemd/system"), Path("/etc/vllm-turbo")
    if override:
        units = Path(override).absolute()
        env_dir = Path(env_override).absolute() if env_override else units.parent / "vllm-turbo-env"
        return Target(scope, units, env_dir, real=False)
    return Target(
        scope, real_units, Path(env_override).absolute() if env_override else real_env, True
    )


def unit_name(name: str) -> str:
    """``vllm-turbo-NAME.service``; NAME defaults to the profile."""
    bare = name.removeprefix(PREFIX).removesuffix(".service")
    if not _NAME.match(bare):
        raise UsageError(
            f"service name {name!r}",
            "is not a plain name",
            "Use letters, digits, '.', '_' and '-' (e.g. --name mtp-8012).",
        )
    return f"{PREFIX}{bare}.service"


# ------------------------------------------------------------------------------ quoting
def _specifiers(text: str) -> str:
    # systemd expands %x specifiers in most settings; a literal % is written %%.
    return text.replace("%", "%%")


def quote_word(word: str) -> str:
    """One ExecStart word as systemd parses it: % and $ literal, quoted when it must be."""
    w = _specifiers(word).replace("$", "$$")
    if w and not re.search(r"[\s\"'\\;]", w):
        return w
    return '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_assignment(key: str, value: str) -> str:
    """``Environment=`` takes quoted KEY=value words; no $-expansion there, only specifiers."""
    text = _specifiers(f"{key}={value}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_exec(line: str) -> list[str]:
    """The argv systemd runs for an ExecStart= value written by :func:`quote_word`."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        if line[i] == '"':
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(line[i])
                i += 1
            i += 1
        else:
            while i < n and not line[i].isspace():
                buf.append(line[i])
                i += 1
        words.append("".join(buf).replace("$$", "$").replace("%%", "%"))
    return words


# ------------------------------------------------------------------------------ the unit
@dataclass(frozen=True)
class Spec:
    """Everything a unit says, as plain data (what --dry-run --json shows)."""

    unit: str
    profile: str
    kind: str
    api: bool
    scope: str
    description: str
    exec_start: list[str]
    working_dir: str
    environment: dict[str, str]
    env_file: str
    requires: list[str] = field(default_factory=list)
    exec_stop: list[str] = field(default_factory=list)
    run_as: str | None = None
    start_timeout_s: int = RAY_START_TIMEOUT_S
    stop_timeout_s: int = 90
    systemd_version: int | None = None
    memlock_unlimited: bool = False

    @property
    def unit_type(self) -> str:
        if self.kind != "serve":
            return "oneshot"
        # A headless worker (tp2-mp-worker) has no /health to wait for.
        return "notify" if self.api else "exec"


def render_unit(spec: Spec) -> str:
    lines = [
        MARK,
        "# Secrets (VLLM_API_KEY, HF_TOKEN) belong in the EnvironmentFile below, never here.",
        "[Unit]",
        f"Description={_specifiers(spec.description)}",
        # A URI list: as_uri() percent-encodes spaces, _specifiers() keeps the % literal.
        f"Documentation={_specifiers((Path(spec.working_dir) / 'docs' / 'serve.md').as_uri())}",
        "After=network-online.target",
        "Wants=network-online.target",
    ]
    for dep in spec.requires:
        lines += [f"Requires={dep}", f"After={dep}"]
    lines += [
        # Keep trying (with a back-off) instead of giving up after five quick failures: on two
        # Sparks tp2-serve fails its preflight until the other node has joined.
        "StartLimitIntervalSec=0",
        "X-Turbo-Profile=" + spec.profile,
        "X-Turbo-Scope=" + spec.scope,
        "X-Turbo-Kind=" + spec.kind,
        "",
        "[Service]",
        f"Type={spec.unit_type}",
    ]
    if spec.unit_type == "notify":
        # serve (the main process) sends READY=1; vLLM, its child, never gets the socket.
        lines.append("NotifyAccess=main")
    if spec.unit_type == "oneshot":
        # `ray start` returns once Ray is up; its daemons stay in this unit's cgroup.
        lines.append("RemainAfterExit=yes")
    if spec.run_as:
        lines.append(f"User={spec.run_as}")
    # Path settings take the rest of the line verbatim (no quotes), only specifiers expand.
    lines.append(f"WorkingDirectory={_specifiers(spec.working_dir)}")
    for key, value in spec.environment.items():
        lines.append(f"Environment={quote_assignment(key, value)}")
    lines.append(f"EnvironmentFile={_specifiers(spec.env_file)}")
    lines.append("ExecStart=" + " ".join(quote_word(w) for w in spec.exec_start))
    if spec.exec_stop:
        lines.append("ExecStop=" + " ".join(quote_word(w) for w in spec.exec_stop))
    if spec.kind == "serve":
        # SIGTERM to serve only: it forwards the signal to vLLM's process group and waits
        # (one place for signal handling); whatever is left is killed at the stop timeout.
        lines.append("KillMode=mixed")
    lines += [
        f"TimeoutStartSec={spec.start_timeout_s}",
        f"TimeoutStopSec={spec.stop_timeout_s}",
        "Restart=on-failure",
        "RestartSec=30s",
    ]
    if spec.systemd_version is not None and spec.systemd_version >= 254:
        lines += ["RestartSteps=5", "RestartMaxDelaySec=10min"]
    lines.append(f"RestartPreventExitStatus={USAGE_EXIT}")
    if spec.memlock_unlimited:
        # NCCL registers GPU/host memory with the RDMA NIC: the default 8 MiB lock limit breaks it.
        lines.append("LimitMEMLOCK=infinity")
    lines += [
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={spec.unit.removesuffix('.service')}",
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.scope == USER else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Key`` -> values, for the units we write (one setting per line, no continuations)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_environment(text: str) -> dict[str, str]:
    """The ``Environment=`` assignments of a unit we wrote."""
    env: dict[str, str] = {}
    for value in parse_unit(text).get("Environment", []):
        for word in split_exec(value):
            k, _, v = word.partition("=")
            env[k] = v
    return env


def is_ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == MARK
    except OSError:
        return False


# ------------------------------------------------------------------------------ env file
def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (systemd's EnvironmentFile syntax, the plain subset we write)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def env_file_text(secrets: Mapping[str, str]) -> str:
    lines = [
        MARK,
        "# Secrets for the unit of the same name, read by systemd at start (this file is 0600).",
        "# One KEY=value per line; restart the unit after editing.",
    ]
    for key in SECRET_ENV:
        if secrets.get(key):
            lines.append(f"{key}={secrets[key]}")
        else:
            lines.append(f"#{key}=")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Create ``path`` 0600 from the first byte (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_unit_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)


def installed_units(tgt: Target) -> list[Path]:
    if not tgt.unit_dir.is_dir():
        return []
    return sorted(p for p in tgt.unit_dir.glob(f"{PREFIX}*.service") if is_ours(p))


def systemd_version(systemctl: Systemctl) -> int | None:
    rc, text = systemctl(["--version"])
    m = re.match(r"systemd (\d+)", text) if rc == 0 else None
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------ the request
@dataclass(frozen=True)
class ServeOptions:
    """The `invoke serve` options a unit passes on (same names, same meaning)."""

    port: int = 0
    model: str = ""
    host: str = ""
    sets: tuple[str, ...] = ()
    head: str = ""
    node_ip: str = ""
    ifname: str = ""
    hca: str = ""
    gid_index: int = -1
    health_timeout: int = 0
    warmup: bool = True

    def argv(self, profile: str) -> list[str]:
        words = ["serve", "--profile", profile]
        for flag, value in (
            ("--port", self.port or ""),
            ("--model", self.model),
            ("--host", self.host),
            ("--head", self.head),
            ("--node-ip", self.node_ip),
            ("--ifname", self.ifname),
            ("--hca", self.hca),
            ("--gid-index", self.gid_index if self.gid_index >= 0 else ""),
            ("--health-timeout", self.health_timeout or ""),
        ):
            if value != "":
                words += [flag, str(value)]
        for item in self.sets:
            words += ["--set", item]
        if not self.warmup:
            words.append("--no-warmup")
        return words


@dataclass(frozen=True)
class InstallRequest:
    profile: str
    scope: str = USER
    name: str = ""
    unit_dir: str = ""
    requires: str | None = None  # tp2-serve: the Ray head's unit (default vllm-turbo-tp2-head)
    serve: ServeOptions = ServeOptions()


@dataclass(frozen=True)
class Served:
    """What serve's own resolution of the profile says, as far as the unit needs it."""

    kind: str
    api: bool
    port: int
    description: str
    uses_ray: bool
    cluster: bool
    failing: list[str]  # names of serve's preflight checks that fail on this host now
    env_names: list[str]  # the profiles file's [env_names]: the seed's MODEL, PORT, ...
    serve_section: dict[str, Any]  # the profiles file's [serve] timeouts
