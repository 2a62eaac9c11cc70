"""The one way the product runs another program.

- :func:`capture`: a short call whose output is read back (a version probe, ``git``,
  ``nvidia-smi``, a compiler run on one file). It never raises because the program is missing,
  cannot start or is too slow: the :class:`Result` says which (``fault``), and
  :meth:`Result.check` turns any failure into one TurboError line (what, why, fix).
- :func:`stream`: a long call (a compile, ``pip install``). Every line goes to a log writer and,
  optionally, to a progress callback; a tick callback runs while the child is quiet. Ctrl-C
  gives the child a grace period to stop before it is killed; any other exception stops it.
  Returns the exit code and the tail of the output.
- :func:`start`: a supervised child (``Popen``) for a process that outlives one call (a
  server, a log tee); a program that cannot start is a TurboError, not an OSError.
- :func:`describe`: the shell-quoted, redacted line for an argv and its environment overlay:
  what every dry run prints and every log records.

``env`` is always an overlay on ``base_env`` (``os.environ`` unless given), so a caller names
only what it changes and :func:`describe` shows only that. Children never read the terminal:
stdin is ``/dev/null`` unless :func:`capture` is handed text for it.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from turbo.errors import TurboError
from turbo.redact import REDACTED, is_secret_key, redact, redact_argv

Env = Mapping[str, str]
LineSink = Callable[[str], None]

# Why a child did not run to its own exit (Result.fault); the exit codes follow the shell's.
MISSING = "missing"  # no such program (rc 127)
UNSTARTABLE = "unstartable"  # it exists but the OS refused to start it (rc 126)
TIMEOUT = "timeout"  # it ran past its time and was killed (rc 124)
_FAULT_RC = {MISSING: 127, UNSTARTABLE: 126, TIMEOUT: 124}


def environment(env: Env | None = None, base_env: Env | None = None) -> dict[str, str]:
    """The full environment a child gets: ``base_env`` (``os.environ``) with ``env`` on top."""
    return {**(os.environ if base_env is None else base_env), **(env or {})}


def describe(argv: Sequence[str], env: Env | None = None) -> str:
    """``KEY=value ... prog args`` for a dry run or a log: shell-quoted so it can be pasted,
    secrets masked (secret-named variables and flags, token shapes, known secret values)."""
    words = []
    for key in sorted(env or {}):
        value = env[key] if env else ""
        shown = REDACTED if is_secret_key(key) and value else redact(value)
        words.append(f"{key}={shlex.quote(shown)}")
    return " ".join([*words, shlex.join(redact_argv(list(argv)))])


@dataclass(frozen=True)
class Result:
    """What a captured call gave back. ``fault`` is empty when the child ran to its own exit;
    otherwise it names why not (MISSING, UNSTARTABLE, TIMEOUT) and ``error`` has the OS's or
    the timer's words."""

    argv: tuple[str, ...]
    rc: int
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    fault: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.fault

    @property
    def output(self) -> str:
        """stdout then stderr, as one text without surrounding blank space."""
        return (self.stdout + self.stderr).strip()

    def why(self) -> str:
        """One line saying why the call failed (empty when it did not)."""
        if self.fault == MISSING:
            return f"{self.argv[0]} is not installed (not found)"
        if self.fault == UNSTARTABLE:
            return f"cannot start {self.argv[0]} ({self.error})"
        if self.fault == TIMEOUT:
            return f"{self.argv[0]} gave no answer in time ({self.error})"
        if self.rc == 0:
            return ""
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1]
        return f"exit {self.rc}"

    def check(self, what: str, fix: str) -> Result:
        """This result when the call succeeded; otherwise TurboError(what, why, fix)."""
        if not self.ok:
            raise TurboError(what, self.why(), fix)
        return self


def _fault_of(exc: OSError, cwd: str | Path | None) -> str:
    # A missing cwd raises FileNotFoundError too; only a missing program is MISSING.
    if isinstance(exc, FileNotFoundError) and not (cwd and str(exc.filename) == str(cwd)):
        return MISSING
    return UNSTARTABLE


def capture(
    argv: Sequence[str],
    *,
    timeout: float | None,
    env: Env | None = None,
    base_env: Env | None = None,
    cwd: str | Path | None = None,
    stdin: str | None = None,
    log: LineSink | None = None,
) -> Result:
    """Run ``argv`` to its end and read its output back (stdout and stderr apart).

    ``timeout`` is required (``None`` only where a call may rightly take unbounded time, a
    compile): past it the child is killed and the result's fault is TIMEOUT. ``log`` records
    the command line, its output and its exit."""
    args = tuple(argv)
    if log is not None:
        log(f"$ {describe(args, env)}" + (f"  (in {cwd})" if cwd else ""))
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=environment(env, base_env),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        fault = _fault_of(exc, cwd)
        res = Result(
            args, _FAULT_RC[fault], seconds=time.monotonic() - t0, fault=fault, error=str(exc)
        )
    except subprocess.TimeoutExpired as exc:
        res = Result(
            args,
            _FAULT_RC[TIMEOUT],
            _text(exc.stdout),
            _text(exc.stderr),
            time.monotonic() - t0,
            TIMEOUT,
            str(exc),
        )
    else:
        res = Result(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    if log is not None:
        for line in res.output.splitlines():
            log(line)
        log(f"exit {res.rc}" + (f" ({res.why()})" if res.fault else ""))
    return res


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def start(
    argv: Sequence[str],
    *,
    env: Env | None = None,
    base_env: Env | None = None,
    cwd: str | Path | None = None,
    what: str | None = None,
    fix: str = "Check that the program is installed (`invoke doctor`).",
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` as a child the caller supervises; further keywords go to ``Popen``
    (stdout, start_new_session ...). A program that cannot start raises TurboError."""
    args = list(argv)
    popen.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(args, cwd=cwd, env=environment(env, base_env), **popen)
    except OSError as exc:
        fault = _fault_of(exc, cwd)
        res = Result(tuple(args), _FAULT_RC[fault], fault=fault, error=str(exc))
        raise TurboError(what or f"running {Path(args[0]).name}", res.why(), fix) from exc


@dataclass(frozen=True)
class Streamed:
    """What a streamed call left: its exit code and the last lines of its output."""

    argv: tuple[str, ...]
    rc: int
    tail: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        """The last non-blank line of output, or ``exit N``; empty when the call succeeded."""
        if self.rc == 0:
            return ""
        lines = [ln.strip() for ln in self.tail if ln.strip()]
        return lines[-1] if lines else f"exit {self.rc}"


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    except (OSError, ValueError):
        pass  # the pipe went away with the child: the run is over either way
    finally:
        lines.put(None)


def stop(child: subprocess.Popen[Any], grace: float, *, signalled: bool = False) -> None:
    """End ``child``: unless it was already ``signalled`` (Ctrl-C reaches the whole process
    group) ask it with SIGTERM, give it ``grace`` seconds, then kill it."""
    if child.poll() is not None:
        return
    if not signalled:
        child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def stream(
    argv: Sequence[str],
    *,
    log: LineSink,
    on_line: LineSink | None = None,
    on_tick: Callable[[], None] | None = None,
    tick: float = 1.0,
    env: Env | None = None,
    base_env: Env | None = None,
    cwd: str | Path | None = None,
    what: str | None = None,
    fix: str = "Check that the program is installed (`invoke doctor`).",
    grace: float = 30.0,
    keep: int = 2000,
) -> Streamed:
    """Run ``argv`` with stdout and stderr merged, each line (without its newline) to ``log``
    then ``on_line``; ``on_tick`` runs about every ``tick`` seconds whatever the child prints.
    The command line goes to ``log`` first. Either callback may raise to end the run (the child
    is stopped). Ctrl-C: the child, which got it too, has ``grace`` seconds before a kill."""
    args = tuple(argv)
    log(f"$ {describe(args, env)}" + (f"  (in {cwd})" if cwd else ""))
    t0 = time.monotonic()
    child = start(
        args,
        env=env,
        base_env=base_env,
        cwd=cwd,
        what=what,
        fix=fix,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    assert child.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
    tail: deque[str] = deque(maxlen=keep)
    try:
        _drain(lines, log, on_line, tail, on_tick, tick)
        rc = child.wait()
    except KeyboardInterrupt:
        stop(child, grace, signalled=True)
        raise
    except BaseException:
        stop(child, grace)
        raise
    child.stdout.close()
    return Streamed(args, rc, tuple(tail), time.monotonic() - t0)


def _drain(
    lines: queue.Queue[str | None],
    log: LineSink,
    on_line: LineSink | None,
    tail: deque[str],
    on_tick: Callable[[], None] | None,
    tick: float,
) -> None:
    next_tick = time.monotonic() + tick
    while True:
        # A bounded wait keeps Ctrl-C and the tick responsive while the child is quiet.
        wait = 1.0 if on_tick is None else max(0.0, min(1.0, next_tick - time.monotonic()))
        try:
            line = lines.get(timeout=wait)
        except queue.Empty:
            pass
        else:
            if line is None:
                return
            log(line)
            tail.append(line)
            if on_line is not None:
                on_line(line)
        if on_tick is not None and time.monotonic() >= next_tick:
            on_tick()
            next_tick = time.monotonic() + tick
