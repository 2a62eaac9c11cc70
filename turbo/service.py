"""`service.*`: a systemd unit per profile that runs the product's own foreground `serve`.

The unit holds no logic of its own: ExecStart is `python -m invoke serve --profile P ...` with
the options given at install, so preflight, the environment, vLLM's argv and signal handling
stay in turbo/serve.py. Serving profiles are ``Type=notify``: serve sends ``READY=1`` once
``/health`` answers and the warm-up request is done (turbo/notify.py), so units ordered after
it start when the model really answers. ``tp2-head``/``tp2-worker`` run `ray start`, which
daemonises: their units are ``Type=oneshot`` with ``RemainAfterExit=yes`` (active once Ray is
up, Ray's processes stay in the unit's cgroup, ``ray stop`` on stop).

Secrets never enter the unit: they go to an ``EnvironmentFile=`` created 0600. Every file we
write starts with :data:`MARK`; a unit or environment file without it is never overwritten or
removed. ``TURBO_SYSTEMD_DIR`` (or ``--unit-dir``) moves the unit directory, and
``TURBO_SERVICE_ENV_DIR`` the environment files, so tests never touch the real ones.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from turbo import paths
from turbo.console import REDACTED, SECRET_ENV, is_secret_key, render_table
from turbo.errors import TurboError, UsageError

Out = Callable[[str], None]
# Runs `systemctl ARGS...`; returns (exit code, stdout). Tests hand in a fake.
Systemctl = Callable[[list[str]], tuple[int, str]]

MARK = "# Written by vllm-turbo (invoke service.install). Reinstall or uninstall with it."
PREFIX = "vllm-turbo-"
USER, SYSTEM = "user", "system"
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


# ------------------------------------------------------------------------------ systemctl
def run_systemctl(args: list[str]) -> tuple[int, str]:
    exe = shutil.which("systemctl")
    if exe is None:
        return 127, "systemctl not found"
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout.strip() or proc.stderr.strip())


def systemd_version(systemctl: Systemctl = run_systemctl) -> int | None:
    rc, text = systemctl(["--version"])
    m = re.match(r"systemd (\d+)", text) if rc == 0 else None
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------ install
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


def _refuse_secret_sets(sets: Sequence[str]) -> None:
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


def plan_install(
    req: InstallRequest,
    environ: Mapping[str, str],
    *,
    python: str = sys.executable,
    systemctl: Systemctl = run_systemctl,
) -> Installed:
    """Resolve the profile through serve itself, then compose the unit and its env file."""
    from turbo import serve
    from turbo.pins import load_pins
    from turbo.profiles import Overrides, load_book

    tgt = target(req.scope, environ, req.unit_dir)
    unit = unit_name(req.name or req.profile)
    o = req.serve
    _refuse_secret_sets(o.sets)
    book = load_book()
    ov = Overrides(
        port=o.port or None,
        model=o.model or None,
        host=o.host or None,
        sets=o.sets,
        head=o.head or None,
        node_ip=o.node_ip or None,
    )
    net = serve.NetOptions(
        ifname=o.ifname or None,
        hca=tuple(h for h in o.hca.split(",") if h),
        gid_index=o.gid_index if o.gid_index >= 0 else None,
    )
    # The same resolution `serve` does: a bad profile, key or missing --head fails here, now.
    prep = serve.prepare(req.profile, load_pins(), ov, book=book, environ=environ, net=net)
    plan = prep.plan
    repo = paths.repo_root()
    env = carried_environment(environ, python, list(book.env_names))
    exec_start = [python, "-m", "invoke", "--search-root", str(repo), *o.argv(req.profile)]
    notes: list[str] = []
    exec_stop: list[str] = []
    if plan.kind != "serve":
        ray = shutil.which("ray", path=env["PATH"])
        if ray is None:
            raise TurboError(
                f"service {req.profile}",
                "ray is not on this environment's PATH",
                "Install from the cluster environment: `pixi run -e cluster invoke "
                f"service.install --profile {req.profile} ...`.",
            )
        exec_stop = [ray, "stop"]
    requires: list[str] = []
    if plan.kind == "serve" and serve._uses_ray(plan):
        requires = [unit_name(req.requires or "tp2-head")] if req.requires != "" else []
    sec = book.section("serve")
    health = float(o.health_timeout or sec.get("health_timeout_s", 1800))
    warm = float(sec.get("warmup_timeout_s", 600)) if o.warmup else 0.0
    start_timeout = (
        math.ceil(health + warm + START_MARGIN_S) if plan.kind == "serve" else RAY_START_TIMEOUT_S
    )
    stop_timeout = math.ceil(float(sec.get("stop_timeout_s", 60)) + 30)
    where = f" on port {plan.port}" if plan.api else ""
    spec = Spec(
        unit=unit,
        profile=req.profile,
        kind=plan.kind,
        api=plan.api,
        scope=req.scope,
        description=f"vllm-turbo {req.profile}{where}: {plan.description}",
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
        memlock_unlimited=req.scope == SYSTEM and bool(book.profiles[req.profile].get("cluster")),
    )
    # One Spark's unified memory holds one model: a second serving unit on this node fails
    # its memory fit (or its port) and loops in restarts.
    others = [
        p.name
        for p in installed_units(tgt)
        if p.name != unit and "X-Turbo-Kind=serve" in p.read_text(errors="replace").splitlines()
    ]
    if plan.kind == "serve" and others:
        notes.append(
            f"{', '.join(others)} also serve(s) a model on this node: one Spark holds one; "
            "enable only one of them"
        )
    env_path = tgt.env_path(unit)
    exists = env_path.exists()
    current = read_env_file(env_path) if exists and is_ours(env_path) else {}
    source = current if exists else environ
    keys = {k: (REDACTED if source.get(k) else "") for k in SECRET_ENV}
    if requires:
        notes.append(
            f"{unit} starts after {requires[0]} (Ray head) and fails its preflight, then "
            "retries, until the worker node has joined"
        )
    if req.scope == USER and prep.profile.cluster:
        notes.append(
            "a user unit cannot raise the locked-memory limit NCCL's RDMA needs; "
            "check `ulimit -l` is unlimited or install with --system"
        )
    failing = [c.name for c in prep.checks if c.status == "fail"]
    if failing:
        notes.append(
            f"serve's preflight fails here now ({', '.join(failing)}): the unit retries until "
            f"it passes; `invoke serve --profile {req.profile} --dry-run` shows why"
        )
    return Installed(spec, tgt.unit_path(unit), render_unit(spec), env_path, keys, exists, notes)


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


def install(
    req: InstallRequest,
    *,
    dry_run: bool,
    enable: bool = False,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
    systemctl: Systemctl = run_systemctl,
    python: str = sys.executable,
    out: Out = print,
) -> int:
    env = os.environ if environ is None else environ
    tgt = target(req.scope, env, req.unit_dir)
    inst = plan_install(req, env, python=python, systemctl=systemctl)
    uid = os.geteuid() if euid is None else euid
    if not dry_run:
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
        if not inst.env_exists:
            write_private(inst.env_path, env_file_text(env))
        else:
            inst.env_path.chmod(0o600)
        write_unit_file(inst.unit_path, inst.unit_text)
        if tgt.real:
            systemctl(tgt.systemctl("daemon-reload"))
            if enable:
                rc, text = systemctl(tgt.systemctl("enable", "--now", inst.spec.unit))
                if rc != 0:
                    raise TurboError(
                        f"systemctl enable --now {inst.spec.unit}",
                        text.splitlines()[-1] if text else f"exit {rc}",
                        "The unit is written; see `invoke service.status`.",
                    )
    if as_json:
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
        out(json.dumps(data, indent=2))
    else:
        out(render_install(inst, tgt, dry_run))
    return 0


# ------------------------------------------------------------------------------ status
NO_SYSTEMCTL = "unknown (systemctl not available)"


@dataclass(frozen=True)
class UnitState:
    unit: str
    profile: str
    scope: str
    path: str
    active: str
    enabled: str


def installed_units(tgt: Target) -> list[Path]:
    if not tgt.unit_dir.is_dir():
        return []
    return sorted(p for p in tgt.unit_dir.glob(f"{PREFIX}*.service") if is_ours(p))


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


# ------------------------------------------------------------------------------ uninstall
def uninstall(
    name: str,
    scope: str,
    *,
    purge: bool,
    dry_run: bool,
    unit_dir: str = "",
    environ: Mapping[str, str] | None = None,
    systemctl: Systemctl = run_systemctl,
    out: Out = print,
) -> int:
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
    verb = "would " if dry_run else ""
    if tgt.real:
        out(f"{verb}run: systemctl {' '.join(tgt.systemctl('disable', '--now', unit))}")
        if not dry_run:
            systemctl(tgt.systemctl("disable", "--now", unit))
    out(f"{verb}remove {path}")
    if remove_env:
        out(f"{verb}remove {env_path}")
    elif env_path.exists():
        out(f"kept {env_path} (it holds your secrets; --purge removes it)")
    if not dry_run:
        path.unlink()
        if remove_env:
            env_path.unlink()
        if tgt.real:
            systemctl(tgt.systemctl("daemon-reload"))
    return 0
