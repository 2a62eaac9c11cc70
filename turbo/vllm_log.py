"""Reading vLLM's own log: the root cause of a failed launch, in one line.

When an engine process dies during start-up, vLLM's API server ends the log with "Engine core
initialization failed. See root cause above." -- the cause is the *first* error of the failing
process: the exception line that ends its first traceback (e.g. ``AssertionError: spec decode
is not supported.``). Process prefixes such as ``(EngineCore_DP0 pid=123)`` and log-record
prefixes (``ERROR 11-30 01:02:03 [core.py:700]``) are stripped.
"""

from __future__ import annotations

import re
from pathlib import Path

# "(EngineCore_DP0 pid=4711) " / "(APIServer pid=1) " / "(RayWorkerWrapper pid=9, ip=...) "
_PROC = re.compile(r"^\s*\([A-Za-z_][\w-]*(?: pid=\d+)?[^)]*\)\s?")
# vLLM's record prefix: "ERROR 11-30 01:02:03 [core.py:700] " (level, date, time, origin).
_RECORD = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \S+ \[[^\]]*\]\s?")
# Our own TaskLog prefix: "01:02:03 ".
_TASKLOG = re.compile(r"^\d\d:\d\d:\d\d ")
# The last line of a traceback: "pkg.mod.SomeError: message" (or a bare "SomeError").
_EXC = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)|AssertionError)"
    r"(?::\s*(.*))?$"
)
# Wrappers that only point elsewhere ("See root cause above").
_WRAPPERS = ("see root cause above", "engine core initialization failed")


def _clean(line: str) -> str:
    line = _TASKLOG.sub("", line.rstrip())
    for _ in range(3):
        new = _RECORD.sub("", _PROC.sub("", line))
        if new == line:
            break
        line = new
    return line


def root_cause(text: str) -> str | None:
    """The first real error in a vLLM log, as ``ExceptionType: message``; None if none."""
    lines = [_clean(ln) for ln in text.splitlines()]
    in_tb = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_tb = True
            continue
        if not in_tb or not line or line[0].isspace():
            continue
        m = _EXC.match(line.strip())
        if m:
            msg = line.strip()
            if not any(w in msg.lower() for w in _WRAPPERS):
                return msg
            in_tb = False
    # No traceback: the first ERROR record that is not a wrapper.
    for raw in text.splitlines():
        stripped = _PROC.sub("", _TASKLOG.sub("", raw.rstrip()))
        if stripped.startswith(("ERROR", "CRITICAL")):
            msg = _clean(raw).strip()
            if msg and not any(w in msg.lower() for w in _WRAPPERS):
                return msg
    return None


def failure_summary(path: Path, tail_lines: int = 15) -> str:
    """The root cause when one is found, else the log's last lines (trimmed)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    cause = root_cause(text)
    if cause:
        return cause[:600]
    tail = [t.strip() for t in text.splitlines()[-tail_lines:] if t.strip()]
    return " | ".join(tail)[-600:]
