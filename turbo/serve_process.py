"""Running a plan: vLLM in the foreground or detached, or a Ray node; then supervising it.

A launch waits for ``/health`` (a first start takes 10-15 minutes), sends one warm-up request
so no user pays the JIT cost, and records a pid file (turbo/serve_records.py) that ``stop``
uses. Whatever vLLM prints reaches the screen and the log with secrets masked: in the
foreground through our own reader, detached through the redacting tee (turbo/logtee.py) that
outlives this command.
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
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from turbo import endpoint, notify, paths, proc, serve_records, vllm_log
from turbo.console import TaskLog
from turbo.errors import TurboError
from turbo.redact import known_secrets, redact, redact_argv, redact_env
from turbo.serve_types import REDACT_ENV, Out, Plan, Supervision

PATH_FIX = "Run inside the pixi environment (`pixi run serve ...`)."


def api_url(plan: Plan) -> str:
    """Where a client on this machine reaches the plan's OpenAI API."""
    return endpoint.endpoint_for(plan.host, plan.port, {}).base + "/v1"


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(t.strip() for t in tail if t.strip())[-600:]


def _log_plan(log: TaskLog, plan: Plan, *, env: bool = True) -> None:
    log.write("argv: " + shlex.join(redact_argv(plan.argv)))
    if env:
        log.write("env: " + json.dumps(redact_env(plan.env)))


def wait_healthy(
    ep: endpoint.Endpoint,
    child: subprocess.Popen[Any] | None,
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
        if child is not None and child.poll() is not None:
            if stopping is not None and stopping.is_set():
                raise KeyboardInterrupt
            raise TurboError(
                "vllm serve",
                f"exited with code {child.returncode} before "
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


def _terminate(child: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``timeout``."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=timeout)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _resolve_exe(argv: list[str]) -> list[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise TurboError(f"{argv[0]}", "not found on PATH", PATH_FIX)
    return [exe, *argv[1:]]


def _after_start(
    plan: Plan,
    child: subprocess.Popen[Any],
    sup: Supervision,
    out: Out,
    log_path: Path,
    stopping: threading.Event | None,
) -> None:
    # A key given after -- lives in plan.env (serve_secrets): the warm-up request needs it too.
    ep = endpoint.endpoint_for(plan.host, plan.port, api_key=plan.env.get("VLLM_API_KEY"))
    waited = wait_healthy(
        ep, child, sup.health_timeout, sup.health_interval, out, log_path, stopping
    )
    out(f"healthy after {waited:.0f} s")
    if sup.warmup:
        out(f"warm-up: {warm_up(ep, plan.served_name, sup.warmup_timeout):.1f} s")
    out(f"serving {plan.served_name} at {api_url(plan)}")


def run_ray(plan: Plan, out: Out) -> int:
    """`ray start` for a head or worker node; Ray's daemons outlive it, `ray stop` ends them."""
    argv = _resolve_exe(plan.argv)
    with TaskLog(f"serve-{plan.profile}") as log:
        _log_plan(log, plan, env=False)
        res = proc.capture(argv, timeout=None, env=plan.env)
        for line in (res.stdout + res.stderr).splitlines():
            log.write(line)
        if res.rc != 0:
            raise TurboError(
                "ray start",
                f"exit {res.rc}: {_log_tail(log.path, 5)}",
                f"Read {log.path}; `ray stop` clears a half-started node.",
            )
        serve_records.record_ray(plan, log.path)
        out(f"{plan.profile}: ray started ({' '.join(redact_argv(plan.argv))}); log {log.path}")
    return 0


# ------------------------------------------------------------------------------ detached
def start_tee(log: Path, secrets: list[str]) -> subprocess.Popen[Any]:
    """The redacting tee (``python -m turbo.logtee LOG``), in a session of its own so a stop
    of the server's group does not cut its log. The secrets travel in its environment."""
    env = dict(os.environ)
    env[REDACT_ENV] = json.dumps(list(secrets))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(paths.repo_root()), env.get("PYTHONPATH", "")) if p
    )
    return proc.start(
        [sys.executable, "-m", "turbo.logtee", str(log)],
        base_env=env,
        what="the log tee",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class TeedProcess(subprocess.Popen[bytes]):
    """A server whose output goes through a tee: it counts as exited once the tee has written
    its last line too, so a log tail read right after an early exit is complete."""

    tee: subprocess.Popen[Any] | None = None

    def poll(self) -> int | None:
        rc = super().poll()
        if rc is not None and self.tee is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.tee.wait(timeout=5)
        return rc


def run_detached(plan: Plan, sup: Supervision, out: Out) -> int:
    argv = _resolve_exe(plan.argv)
    log = TaskLog(f"serve-{plan.profile}")
    _log_plan(log, plan)
    log.close()
    # vLLM outlives this command: a redacting tee stays behind to keep secrets out of the log.
    tee = start_tee(log.path, known_secrets())
    assert tee.stdin is not None
    try:
        # A Popen subclass (it waits for the tee), so started here rather than by proc.start.
        child = TeedProcess(
            argv,
            env={**os.environ, **plan.env},
            stdout=tee.stdin,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.tee = tee
    finally:
        tee.stdin.close()
    pidf = serve_records.record(plan, child.pid, log.path)
    out(f"started pid {child.pid}; log {log.path}")
    try:
        if plan.api:
            _after_start(plan, child, sup, out, log.path, None)
    except BaseException:
        # All or nothing: a server that never became usable is not left behind.
        _terminate(child, sup.stop_timeout)
        pidf.unlink(missing_ok=True)
        raise
    out(f"detached; stop it with `invoke stop --port {plan.port}`")
    return 0


# ------------------------------------------------------------------------------ foreground
def _forward_signals(
    child: subprocess.Popen[Any],
    stopping: threading.Event,
    progress: notify.Progress,
    notifier: notify.Notifier,
) -> dict[int, Any]:
    """Ctrl-C, SIGTERM and SIGHUP go to vLLM's process group; returns the old handlers."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Second signal: the user means it.
        sig = signal.SIGKILL if stopping.is_set() else signum
        if not stopping.is_set():
            progress.done = True
            notifier.stopping(f"stopping vllm (signal {signum})")
        stopping.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)

    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    return {s: signal.signal(s, forward) for s in signals}


def _reader(
    child: subprocess.Popen[str], console: TextIO, log: TaskLog, progress: notify.Progress
) -> threading.Thread:
    """vLLM's output, masked, to the screen and the log; its progress to systemd."""

    def tee() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            console.write(redact(line))
            console.flush()
            log.write(line)
            progress.offer(redact(line))

    return threading.Thread(target=tee, daemon=True)


def _start_foreground(argv: list[str], plan: Plan) -> subprocess.Popen[str]:
    child: subprocess.Popen[str] = proc.start(
        argv,
        base_env=notify.child_env({**os.environ, **plan.env}),
        what="vllm serve",
        fix=PATH_FIX,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        bufsize=1,
    )
    return child


def run_foreground(plan: Plan, sup: Supervision, out: Out, sink: TextIO | None = None) -> int:
    argv = _resolve_exe(plan.argv)
    # Under a Type=notify unit (turbo/service.py): progress as STATUS=, READY=1 once warmed up.
    notifier = notify.Notifier.from_env()
    progress = notify.Progress(notifier)

    def say(line: str) -> None:
        out(line)
        notifier.status(line)

    with TaskLog(f"serve-{plan.profile}") as log:
        _log_plan(log, plan)
        child = _start_foreground(argv, plan)
        pidf = serve_records.record(plan, child.pid, log.path)
        notifier.status(f"started vllm (pid {child.pid}); waiting for /health")
        stopping = threading.Event()
        previous = _forward_signals(child, stopping, progress, notifier)
        reader = _reader(child, sink or sys.stdout, log, progress)
        reader.start()
        try:
            if plan.api:
                try:
                    _after_start(plan, child, sup, say, log.path, stopping)
                    progress.ready(f"serving {plan.served_name} at {api_url(plan)}")
                except KeyboardInterrupt:
                    pass
                except BaseException:
                    _terminate(child, sup.stop_timeout)
                    raise
            rc = child.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            reader.join(timeout=5)
            pidf.unlink(missing_ok=True)
        out(f"vllm serve exited with code {rc}; log {log.path}")
        return 0 if stopping.is_set() and rc in (0, -2, -15, 130, 143) else rc
