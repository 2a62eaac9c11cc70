"""`serve` and `stop`: a profile becomes argv + env, is checked, launched and supervised.

The plan (argv, env) is plain data so ``--dry-run`` shows exactly what runs and golden tests
pin it. Launch waits for ``/health`` (a first start takes 10-15 minutes), sends one warm-up
request so no user pays the JIT cost, and records a pid file that ``stop`` uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from turbo import (
    cluster,
    endpoint,
    extra_args,
    logtee,
    memfit,
    notify,
    paths,
    serve_plan,
    serve_secrets,
    stamp,
    vllm_log,
)
from turbo.build_verdict import vllm_build_check
from turbo.checks import FAIL as FAIL
from turbo.checks import PASS as PASS
from turbo.checks import WARN as WARN
from turbo.checks import Check as Check
from turbo.checks import failed
from turbo.console import (
    TaskLog,
    known_secrets,
    redact,
    redact_argv,
    redact_env,
    register_secrets,
    render_table,
)
from turbo.errors import TurboError, UsageError
from turbo.host import Host as Host
from turbo.host import check_port, nvidia_smi
from turbo.jsonfile import read_json, write_json_atomic
from turbo.manifest import check_local, read_manifest
from turbo.pins import Pins
from turbo.profiles import Overrides, Profile, ProfileBook, load_book
from turbo.serve_plan import build_plan as build_plan
from turbo.serve_types import DETECT_NET
from turbo.serve_types import NetOptions as NetOptions
from turbo.serve_types import Out as Out
from turbo.serve_types import Plan as Plan
from turbo.serve_types import Supervision as Supervision


# ------------------------------------------------------------------------------ the plan
def api_url(plan: Plan) -> str:
    """Where a client on this machine reaches the plan's OpenAI API."""
    return endpoint.endpoint_for(plan.host, plan.port, {}).base + "/v1"


def plan_view(plan: Plan) -> dict[str, Any]:
    """The redacted, printable form of a plan (what --dry-run --json shows)."""
    d = asdict(plan)
    d["argv"] = redact_argv(plan.argv)
    d["command"] = shlex.join(d["argv"])
    d["env"] = redact_env(plan.env)
    d["endpoint"] = api_url(plan) if plan.api else None
    return d


def _uses_ray(plan: Plan) -> bool:
    return plan.uses_ray


# ------------------------------------------------------------------------------ checks
@dataclass
class Probe:
    """Everything serve asks of the machine; tests replace fields."""

    host: Host = field(default_factory=Host)
    sysfs: Path = Path("/sys")
    ipv4: cluster.Ipv4Of = cluster.ipv4_of
    gpu: Callable[[], str | None] | None = None

    def gpu_name(self) -> str | None:
        if self.gpu is not None:
            return self.gpu()
        smi = nvidia_smi(self.host)
        return smi[0] if smi else None


def model_problems(model_dir: Path) -> list[str]:
    """What is missing or wrong in the model directory; empty when it is complete."""
    if not model_dir.is_dir():
        return [f"{model_dir} does not exist"]
    try:
        return check_local(model_dir)
    except TurboError as err:
        return [f"{err.what}: {err.why}"]  # names the file (a corrupt or crafted manifest)


def weights_bytes(model_dir: Path, fallback_gb: float) -> tuple[int, str]:
    try:
        manifest = read_manifest(model_dir)
    except TurboError:
        manifest = None
    if manifest is not None and manifest.weights_bytes:
        return manifest.weights_bytes, "model manifest"
    return int(fallback_gb * 1e9), "pins [model] size_gb (no manifest yet)"


def memory_fit(
    plan: Plan, prof: Profile, book: ProfileBook, probe: Probe, size_gb: float
) -> memfit.MemFit:
    mem = book.section("memory")
    info = probe.host.meminfo_gb()
    total = info.get("MemTotal") or float(mem.get("unified_gb", 128))
    shape, _ = memfit.load_shape(Path(plan.model), book.section("model_shape"))
    wbytes, _ = weights_bytes(Path(plan.model), size_gb)
    return memfit.estimate(
        weights_bytes=wbytes,
        tensor_parallel=int(prof.args.get("tensor-parallel-size", 1)),
        utilization=float(prof.args.get("gpu-memory-utilization", 0.9)),
        max_model_len=int(prof.args.get("max-model-len", 262144)),
        kv_dtype=str(prof.args.get("kv-cache-dtype", "auto")),
        shape=shape,
        total_gb=total,
        available_gb=info.get("MemAvailable"),
        overhead_gb=float(mem.get("overhead_gb", 8.0)),
        max_safe_utilization=float(mem.get("max_safe_utilization", 0.85)),
    )


def _has_api_key(plan: Plan, environ: Mapping[str, str]) -> bool:
    return bool(environ.get("VLLM_API_KEY") or plan.env.get("VLLM_API_KEY")) or any(
        w == "--api-key" or w.startswith("--api-key=") for w in plan.argv
    )


def build_check(built: Mapping[str, Any] | None, device: str = "cuda") -> Check:
    """A usable stamp for ``device`` ("cuda": with GB10 code; "cpu": a CPU build; "any"); the
    same verdict doctor gives, weighed as a launch's gate (FAIL)."""
    return vllm_build_check(built, device, blocking=True)


def _ray_python(probe: Probe, built: Mapping[str, Any] | None) -> str:
    """The interpreter that has Ray: the adopted vLLM's, else the one beside `ray` on PATH."""
    exe = (built or {}).get("python_exe")
    if isinstance(exe, str) and Path(exe).is_file():
        return exe
    ray = probe.host.which("ray")
    if ray:
        beside = Path(ray).parent / "python"
        if beside.is_file():
            return str(beside)
    return sys.executable


def same_build_check(prof: Profile, probe: Probe, built: Mapping[str, Any] | None) -> Check:
    """Over Ray itself: every joined node must advertise this node's build digest."""
    mine = serve_plan.local_build_digest(built)
    fix = (
        "Install the same build on both (`pixi run wheel` here, `pixi run install-wheel` "
        "there), then restart tp2-worker."
    )
    if mine is None:
        return Check("same build", FAIL, "this node has no usable build stamp", fix)
    want = int(str(prof.args.get("tensor-parallel-size", 2)))
    try:
        nodes = cluster.query_ray_nodes(_ray_python(probe, built), probe.host.run)
    except TurboError as err:
        return Check("same build", FAIL, err.why, err.fix)
    problems = cluster.same_build_problems(nodes, mine, want)
    if problems:
        return Check("same build", FAIL, "; ".join(problems), fix)
    return Check("same build", PASS, f"{len(nodes)} nodes on build {mine[:16]}")


def preflight(
    plan: Plan,
    prof: Profile,
    book: ProfileBook,
    probe: Probe,
    environ: Mapping[str, str],
    size_gb: float,
    roce_error: str | None = None,
    built: Mapping[str, Any] | None = None,
) -> list[Check]:
    """Everything to check before a launch; ``built`` is this node's build stamp (read once)."""
    checks: list[Check] = []
    if plan.kind == "serve":
        checks.append(build_check(built, prof.device))
        problems = model_problems(Path(plan.model))
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            checks.append(
                Check(
                    "model",
                    FAIL,
                    f"{problems[0]}{more}",
                    "Run `pixi run fetch-model` (it resumes), or pass --model.",
                )
            )
        else:
            checks.append(Check("model", PASS, f"complete per its manifest: {plan.model}"))
        if plan.api:
            checks.append(check_port(probe.host, plan.host, plan.port, name="port", blocking=True))
        if prof.device == "cpu":
            checks.append(cpu_memory_fit(plan, book, probe, size_gb))
            bind = cpu_binding_check(plan, probe, environ)
            if bind is not None:
                checks.append(bind)
        else:
            gpu = probe.gpu_name()
            checks.append(
                Check("gpu", PASS, gpu)
                if gpu
                else Check(
                    "gpu",
                    FAIL,
                    "no NVIDIA GPU visible (nvidia-smi)",
                    "Serve on the DGX Spark; check the driver with `nvidia-smi`.",
                )
            )
            try:
                fit = memory_fit(plan, prof, book, probe, size_gb)
                checks.append(Check("memory fit", fit.status, fit.detail, fit.fix))
            except TurboError as err:
                checks.append(Check("memory fit", FAIL, f"{err.what} {err.why}", err.fix))
        if plan.api and plan.host not in endpoint.LOOPBACK:
            if _has_api_key(plan, environ):
                checks.append(Check("exposure", PASS, f"bound to {plan.host}, API key set"))
            else:
                checks.append(
                    Check(
                        "exposure",
                        WARN,
                        f"bound to {plan.host} without an API key: anyone on the "
                        "network can use it",
                        "Export VLLM_API_KEY before serving.",
                    )
                )
    else:
        # A Ray node only advertises its build; tp2-serve's own checks judge the device.
        checks.append(build_check(built, "any"))
        # An adopted vLLM's own `ray` (beside its `vllm`) is what the plan runs.
        first = Path(plan.argv[0])
        ray = str(first) if first.is_absolute() and first.is_file() else probe.host.which("ray")
        checks.append(
            Check("ray", PASS, ray)
            if ray
            else Check(
                "ray",
                FAIL,
                "ray not on PATH",
                "Use the pixi cluster environment (`pixi run -e cluster ...`).",
            )
        )
    if plan.kind == "serve" and plan.uses_ray:
        checks.append(same_build_check(prof, probe, built))
    if prof.cluster:
        if roce_error:
            checks.append(
                Check(
                    "roce", FAIL, roce_error, "Pass --ifname and --hca (and --node-ip) to override."
                )
            )
        elif plan.roce:
            checks.append(
                Check(
                    "roce",
                    PASS,
                    f"{plan.roce['ifname']} "
                    f"({','.join(plan.roce['hca'])}) {plan.roce['node_ip']}, "
                    f"found via {plan.roce['source']}",
                )
            )
        if "VLLM_NCCL_SO_PATH" not in plan.env:
            checks.append(
                Check(
                    "system nccl",
                    WARN,
                    "no system libnccl found",
                    "The pip NCCL is reported to hang on two Sparks under load; "
                    "install libnccl2 or set VLLM_NCCL_SO_PATH.",
                )
            )
    # Logs and pid files go under TURBO_HOME: say so now, not after a 15-minute start.
    for where in (paths.log_dir(), paths.run_dir()):
        why = paths.unwritable_reason(where)
        if why:
            checks.append(
                Check(
                    "state dir",
                    FAIL,
                    why,
                    "Set TURBO_HOME to a directory you own, or fix the owner (`sudo chown -R`).",
                )
            )
            break
    return checks


def cpu_memory_fit(plan: Plan, book: ProfileBook, probe: Probe, size_gb: float) -> Check:
    """vLLM's CPU build: weights + its KV cache space + process overhead in available RAM."""
    wbytes, source = weights_bytes(Path(plan.model), size_gb)
    kv_gb = float(plan.env.get("VLLM_CPU_KVCACHE_SPACE") or 4)
    overhead = float(book.section("memory").get("cpu_overhead_gb", 3.0))
    need = wbytes / 1e9 + kv_gb + overhead
    avail = probe.host.meminfo_gb().get("MemAvailable")
    detail = (
        f"needs ~{need:.1f} GB (weights {wbytes / 1e9:.2f} GB from {source}, KV cache "
        f"{kv_gb:g} GB, overhead {overhead:g} GB)"
    )
    if avail is None:
        return Check("memory fit", WARN, detail + "; MemAvailable unreadable", "")
    if need > avail:
        return Check(
            "memory fit",
            FAIL,
            f"{detail}, only {avail:.1f} GB available",
            "Free memory, or lower VLLM_CPU_KVCACHE_SPACE (--set env.VLLM_CPU_KVCACHE_SPACE=1).",
        )
    return Check("memory fit", PASS, f"{detail}, {avail:.1f} GB available")


def _tensor_parallel(argv: list[str]) -> int:
    size = 1
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if flag in ("--tensor-parallel-size", "-tp"):
            text = value if eq else (argv[i + 1] if i + 1 < len(argv) else "1")
            size = int(text) if text.isdigit() else size
    return size


def cpu_binding_check(plan: Plan, probe: Probe, environ: Mapping[str, str]) -> Check | None:
    """vLLM's CPU backend binds each tensor-parallel worker's threads to a NUMA node of its
    own ("auto"); with fewer NUMA nodes than workers on one host it stops with "Not enough
    allowed NUMA nodes ... Please try to bind threads manually" (seen with TP=2 on a 1-node
    host). Say so before the launch; two hosts of one node each may well be fine."""
    tp = _tensor_parallel(plan.argv)
    if (
        tp < 2
        or plan.env.get("VLLM_CPU_OMP_THREADS_BIND")
        or environ.get("VLLM_CPU_OMP_THREADS_BIND")
    ):
        return None
    nodes = len(list((probe.sysfs / "devices" / "system" / "node").glob("node[0-9]*")))
    if nodes == 0 or nodes >= tp:
        return None
    return Check(
        "cpu binding",
        WARN,
        f"{tp} tensor-parallel CPU workers and {nodes} NUMA node(s) here: vLLM's automatic "
        "binding needs one node per worker on a host",
        "Bind by hand, one core list per worker: --set 'env.VLLM_CPU_OMP_THREADS_BIND=0|1'.",
    )


def render_checks(checks: list[Check]) -> str:
    return render_table(
        ["check", "status", "detail", "what to do"],
        [(c.name, c.status.upper(), c.detail, c.fix) for c in checks],
    )


def first_failure(checks: list[Check]) -> TurboError | None:
    bad = failed(checks)
    if not bad:
        return None
    c = bad[0]
    # Named, not "above": a launch prints this one line and no table.
    more = f" (also failed: {', '.join(b.name for b in bad[1:])})" if len(bad) > 1 else ""
    return TurboError(f"serve preflight: {c.name}", c.detail + more, c.fix)


# ------------------------------------------------------------------------------ pid files
def pid_file(plan: Plan) -> Path:
    stem = f"serve-{plan.port}" if plan.api else plan.profile
    return paths.run_dir() / f"{stem}.json"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a pid: tells a live server from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record(plan: Plan, pid: int, log: Path) -> Path:
    p = pid_file(plan)
    write_json_atomic(
        p,
        {
            "pid": pid,
            "start_time": _start_time(pid),
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
        if _start_time(pid) is not None and _start_time(pid) == rec.get("start_time"):
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


def _leads_own_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _corrupt_pid_files(files: list[Path]) -> TurboError:
    more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
    return TurboError(
        f"pid file {files[0]}{more}",
        "is not a record written by serve (corrupt or edited), so it cannot say which "
        "process to stop",
        "If a server still runs, find it with `pgrep -af 'vllm serve'` and end it; then "
        "delete the file.",
    )


# ------------------------------------------------------------------------------ launch
def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(t.strip() for t in tail if t.strip())[-600:]


def wait_healthy(
    ep: endpoint.Endpoint,
    proc: subprocess.Popen[Any] | None,
    timeout: float,
    interval: float,
    out: Out,
    log_path: Path,
    stopping: threading.Event | None = None,
) -> float:
    """Poll /health until 200; fail early when the process exits. Returns seconds waited."""
    start = time.monotonic()
    next_note = start + 30
    while True:
        if endpoint.healthy(ep):
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            if stopping is not None and stopping.is_set():
                raise KeyboardInterrupt
            raise TurboError(
                "vllm serve",
                f"exited with code {proc.returncode} before "
                f"becoming healthy: {redact(vllm_log.failure_summary(log_path))}",
                f"Read the full log: {log_path}",
            )
        now = time.monotonic()
        if now - start > timeout:
            raise TurboError(
                "vllm serve",
                f"not healthy after {timeout:.0f} s at {ep.url('/health')}",
                f"Raise --health-timeout (a first start takes 10-15 minutes); log: {log_path}",
            )
        if now >= next_note:
            out(
                f"  waiting for {ep.url('/health')} ... {now - start:.0f} s "
                f"(first start: 10-15 min)"
            )
            next_note = now + 30
        time.sleep(interval)


def warm_up(ep: endpoint.Endpoint, served_name: str, timeout: float) -> float:
    """One short request: the first one pays torch/Triton JIT compilation (~25 s)."""
    t0 = time.monotonic()
    endpoint.post_json(
        ep,
        "/v1/chat/completions",
        {
            "model": served_name,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say OK."}],
        },
        timeout=timeout,
    )
    return time.monotonic() - t0


def _terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _resolve_exe(argv: list[str]) -> list[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise TurboError(
            f"{argv[0]}",
            "not found on PATH",
            "Run inside the pixi environment (`pixi run serve ...`).",
        )
    return [exe, *argv[1:]]


def _after_start(
    plan: Plan,
    proc: subprocess.Popen[Any],
    sup: Supervision,
    out: Out,
    log_path: Path,
    stopping: threading.Event | None,
) -> None:
    # A key given after -- lives in plan.env (serve_secrets): the warm-up request needs it too.
    ep = endpoint.endpoint_for(plan.host, plan.port, api_key=plan.env.get("VLLM_API_KEY"))
    waited = wait_healthy(
        ep, proc, sup.health_timeout, sup.health_interval, out, log_path, stopping
    )
    out(f"healthy after {waited:.0f} s")
    if sup.warmup:
        out(f"warm-up: {warm_up(ep, plan.served_name, sup.warmup_timeout):.1f} s")
    out(f"serving {plan.served_name} at {api_url(plan)}")


def run_ray(plan: Plan, out: Out) -> int:
    argv = _resolve_exe(plan.argv)
    with TaskLog(f"serve-{plan.profile}") as log:
        log.write("argv: " + shlex.join(redact_argv(plan.argv)))
        proc = subprocess.run(
            argv, env={**os.environ, **plan.env}, capture_output=True, text=True, check=False
        )
        for line in (proc.stdout + proc.stderr).splitlines():
            log.write(line)
        if proc.returncode != 0:
            raise TurboError(
                "ray start",
                f"exit {proc.returncode}: {_log_tail(log.path, 5)}",
                f"Read {log.path}; `ray stop` clears a half-started node.",
            )
        write_json_atomic(
            pid_file(plan),
            {
                "kind": plan.kind,
                "profile": plan.profile,
                "log": str(log.path),
                "argv": redact_argv(plan.argv),
            },
        )
        out(f"{plan.profile}: ray started ({' '.join(redact_argv(plan.argv))}); log {log.path}")
    return 0


def run_detached(plan: Plan, sup: Supervision, out: Out) -> int:
    argv = _resolve_exe(plan.argv)
    log = TaskLog(f"serve-{plan.profile}")
    log.write("argv: " + shlex.join(redact_argv(plan.argv)))
    log.write("env: " + json.dumps(redact_env(plan.env)))
    log.close()
    # vLLM outlives this command: a redacting tee stays behind to keep secrets out of the log.
    tee = logtee.start(log.path, known_secrets())
    assert tee.stdin is not None
    try:
        proc = logtee.TeedProcess(
            argv,
            env={**os.environ, **plan.env},
            stdout=tee.stdin,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc.tee = tee
    finally:
        tee.stdin.close()
    pidf = record(plan, proc.pid, log.path)
    out(f"started pid {proc.pid}; log {log.path}")
    try:
        if plan.api:
            _after_start(plan, proc, sup, out, log.path, None)
    except BaseException:
        # All or nothing: a server that never became usable is not left behind.
        _terminate(proc, sup.stop_timeout)
        pidf.unlink(missing_ok=True)
        raise
    out(f"detached; stop it with `invoke stop --port {plan.port}`")
    return 0


def run_foreground(plan: Plan, sup: Supervision, out: Out, sink: TextIO | None = None) -> int:
    argv = _resolve_exe(plan.argv)
    console = sink or sys.stdout
    # Under a Type=notify unit (turbo/service.py): progress as STATUS=, READY=1 once warmed up.
    notifier = notify.Notifier.from_env()
    progress = notify.Progress(notifier)

    def say(line: str) -> None:
        out(line)
        notifier.status(line)

    with TaskLog(f"serve-{plan.profile}") as log:
        log.write("argv: " + shlex.join(redact_argv(plan.argv)))
        log.write("env: " + json.dumps(redact_env(plan.env)))
        proc = subprocess.Popen(
            argv,
            env=notify.child_env({**os.environ, **plan.env}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        pidf = record(plan, proc.pid, log.path)
        notifier.status(f"started vllm (pid {proc.pid}); waiting for /health")
        stopping = threading.Event()
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]

        def forward(signum: int, _frame: FrameType | None) -> None:
            # Second signal: the user means it.
            sig = signal.SIGKILL if stopping.is_set() else signum
            if not stopping.is_set():
                progress.done = True
                notifier.stopping(f"stopping vllm (signal {signum})")
            stopping.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

        def tee() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                console.write(redact(line))
                console.flush()
                log.write(line)
                progress.offer(redact(line))

        previous = {s: signal.signal(s, forward) for s in signals}
        reader = threading.Thread(target=tee, daemon=True)
        reader.start()
        try:
            if plan.api:
                try:
                    _after_start(plan, proc, sup, say, log.path, stopping)
                    progress.ready(f"serving {plan.served_name} at {api_url(plan)}")
                except KeyboardInterrupt:
                    pass
                except BaseException:
                    _terminate(proc, sup.stop_timeout)
                    raise
            rc = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            reader.join(timeout=5)
            pidf.unlink(missing_ok=True)
        out(f"vllm serve exited with code {rc}; log {log.path}")
        return 0 if stopping.is_set() and rc in (0, -2, -15, 130, 143) else rc


# ------------------------------------------------------------------------------ stop
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
            raise _corrupt_pid_files(corrupt)
        out("nothing to stop: no server recorded in " + str(paths.run_dir()))
        return 0
    if len(recs) > 1 and not everything and port is None:
        listing = ", ".join(f"{r.get('profile')} (port {r.get('port')})" for r in recs)
        raise UsageError("stop", f"several are running: {listing}", "Pass --port N or --all.")
    if dry_run:
        for rec in recs:
            how = (
                "`ray stop`"
                if rec.get("kind") != "serve"
                else f"SIGTERM to process group {rec.get('pid')}, SIGKILL after {timeout:.0f} s"
            )
            out(f"would stop {rec.get('profile')} (port {rec.get('port')}): {how}")
        if corrupt:
            out(f"warning: {_corrupt_pid_files(corrupt).line()}")
        return 0
    for rec in recs:
        f = Path(rec["file"])
        if rec.get("kind") != "serve":
            # The `ray` that started the node (an adopted vLLM's), else the one on PATH.
            argv0 = str((rec.get("argv") or [""])[0])
            ray_exe = (
                argv0
                if Path(argv0).name == "ray" and Path(argv0).is_absolute() and Path(argv0).is_file()
                else shutil.which("ray")
            )
            rc = (
                subprocess.run([ray_exe, "stop"], check=False, capture_output=True).returncode
                if ray_exe
                else 127
            )
            out(f"{rec.get('profile')}: ray stop (exit {rc})")
            f.unlink(missing_ok=True)
            continue
        pid = int(rec["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _start_time(pid) is not None:
            if _zombie(pid):
                break
            time.sleep(0.2)
        if _start_time(pid) is not None and not _zombie(pid):
            os.killpg(pid, signal.SIGKILL)
            out(f"pid {pid} ignored SIGTERM for {timeout:.0f} s: killed")
        f.unlink(missing_ok=True)
        out(f"stopped {rec.get('profile')} (pid {pid}, port {rec.get('port')})")
    if corrupt:
        out(f"warning: {_corrupt_pid_files(corrupt).line()}")
    return 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ------------------------------------------------------------------------------ the command
@dataclass(frozen=True)
class Prepared:
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
    built = stamp.read_stamp()
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
    checks = preflight(plan, prof, b, pr, env, pins.model.size_gb, planned.roce_error, built)
    return Prepared(plan, prof, checks)


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
        return run_ray(plan, out)
    if detach:
        return run_detached(plan, sup, out)
    return run_foreground(plan, sup, out)


def command(
    profile: str,
    pins: Pins,
    overrides: Overrides,
    *,
    net: NetOptions,
    detach: bool,
    dry_run: bool,
    as_json: bool,
    health_timeout: float | None,
    warmup: bool,
    out: Out = print,
) -> int:
    """What `invoke serve` does after parsing its options."""
    book = load_book()
    prep = prepare(profile, pins, overrides, book=book, net=net)
    if dry_run:
        if as_json:
            data = plan_view(prep.plan)
            data["checks"] = [asdict(c) for c in prep.checks]
            out(json.dumps(data, indent=2))
        else:
            out(render_plan(prep))
        return 0
    return launch(prep, supervision(book, health_timeout, warmup), detach=detach, out=out)
