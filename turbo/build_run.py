"""Running one build command: its output streamed to the log, ninja's progress as steps done and
an ETA, and a failure read back into one line (a compiler killed for memory says so)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from turbo import proc
from turbo.build_types import Jobs, Step
from turbo.console import TaskLog
from turbo.errors import TurboError

Echo = Callable[[str], None]

# A compiler killed by the kernel's OOM killer looks like one of these in the build output.
OOM_PATTERNS = (
    re.compile(r"died due to signal 9"),
    re.compile(r"Killed signal terminated program"),
    re.compile(r"signal 9 \(Kill"),
    re.compile(r"internal compiler error: Killed"),
    re.compile(r"(^|\s)Killed(\s|$)"),
    re.compile(r"std::bad_alloc|out of memory allocating", re.IGNORECASE),
)
_ERROR_LINE = re.compile(
    r"(\berror\b|FAILED:|fatal|CMake Error|undefined reference|"
    r"No such file|Traceback|Error:)",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- progress
@dataclass
class Progress:
    done: int
    total: int
    eta_s: float | None

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 0.0
        eta = "" if self.eta_s is None else f", ETA {format_duration(self.eta_s)}"
        return f"[{self.done}/{self.total}] {pct:5.1f}%{eta}"


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class NinjaProgress:
    """Steps done / total and an ETA from ninja's ``[N/M]`` lines.

    The ETA is the mean rate since the current count started; a new total (CMake's FetchContent
    sub-builds print their own small counts first) restarts the estimate.
    """

    _STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = 0
        self.done = 0
        self._t0 = 0.0
        self._d0 = 0

    def feed(self, line: str) -> Progress | None:
        m = self._STEP.match(line)
        if not m:
            return None
        done, total = int(m.group(1)), int(m.group(2))
        now = self.clock()
        if total != self.total or done < self.done:
            self.total, self._t0, self._d0 = total, now, done
        self.done = done
        eta = None
        elapsed = now - self._t0
        if done > self._d0 and elapsed > 0:
            eta = (total - done) * elapsed / (done - self._d0)
        return Progress(done, total, eta)


# --------------------------------------------------------------------------- failure analysis
def oom_killed(lines: list[str]) -> bool:
    return any(p.search(line) for line in lines for p in OOM_PATTERNS)


def error_summary(lines: list[str], limit: int = 12) -> list[str]:
    """The last lines that say what went wrong (not the pip noise that follows them)."""
    hits = [ln.rstrip() for ln in lines if _ERROR_LINE.search(ln) and "-Werror" not in ln]
    return (hits or [ln.rstrip() for ln in lines if ln.strip()])[-limit:]


def failure_error(step: str, lines: list[str], log: Path, jobs: Jobs | None) -> TurboError:
    if oom_killed(lines):
        lower = max(1, (jobs.max_jobs // 2) if jobs else 1)
        return TurboError(
            f"build step '{step}'",
            f"a compiler was killed for lack of memory (MAX_JOBS={jobs.max_jobs if jobs else '?'})",
            f"Re-run with --max-jobs {lower} (it resumes); full log: {log}",
        )
    last = error_summary(lines, 1)
    return TurboError(
        f"build step '{step}'",
        f"failed: {last[0] if last else 'no output'}",
        f"The last error lines are above; full log: {log}. Re-run to resume.",
    )


# --------------------------------------------------------------------------- running
def run_step(
    step: Step,
    log: TaskLog,
    echo: Echo,
    *,
    verbose: bool = False,
    jobs: Jobs | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Run one argv step, streaming its output to the log; progress lines go to ``echo``."""
    assert step.argv is not None
    progress = NinjaProgress(clock)
    last_print = [0.0]

    def show(line: str) -> None:
        if verbose:
            echo(line)
            return
        p = progress.feed(line)
        if p is not None:
            now = clock()
            if now - last_print[0] >= 5.0 or p.done == p.total:
                echo(f"  {step.name}: {p.line()}")
                last_print[0] = now

    ran = proc.stream(
        step.argv,
        log=log.write,
        on_line=show,
        env=step.env,
        cwd=step.cwd,
        what=f"build step '{step.name}'",
        fix="Check the toolchain (`invoke doctor`).",
    )
    lines = list(ran.tail)
    if ran.rc != 0:
        for ln in error_summary(lines):
            echo(f"  | {ln}")
        raise failure_error(step.name, lines, log.path, jobs)
    return lines
