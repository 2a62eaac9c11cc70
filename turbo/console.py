"""Output helpers shared by every stage: tables, private log files, and the secret redaction
of :mod:`turbo.redact` under the names its users import from here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

from turbo import paths
from turbo.errors import TurboError
from turbo.redact import (
    REDACTED,
    SECRET_ENV,
    argv_secrets,
    is_secret_key,
    known_secrets,
    redact,
    redact_argv,
    redact_env,
    register_secrets,
    strip_url_credentials,
)

__all__ = [
    "REDACTED",
    "SECRET_ENV",
    "TaskLog",
    "argv_secrets",
    "is_secret_key",
    "known_secrets",
    "open_private",
    "private_dir",
    "redact",
    "redact_argv",
    "redact_env",
    "register_secrets",
    "render_table",
    "strip_url_credentials",
]


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (logs: they may quote a secret a redaction missed)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)  # made wider by a umask or by hand
    return path


def open_private(path: Path, truncate: bool = False) -> TextIO:
    """Open ``path`` for appending (or from empty with ``truncate``), created 0600 (never
    world-readable, whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table with left-aligned columns (no third-party dependency)."""
    body = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(line.rstrip() for line in lines)


class TaskLog:
    """A timestamped, redacted log file for one run of a task: ``.turbo/logs/<task>-<time>.log``."""

    def __init__(self, task: str, directory: Path | None = None) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = directory or paths.log_dir()
        self.path = self.dir / f"{task}-{stamp}-{os.getpid()}.log"
        try:
            private_dir(self.dir)
            self._fh = open_private(self.path)
        except OSError as exc:
            # A log directory owned by another user, or a read-only TURBO_HOME.
            raise TurboError(
                f"log file {self.path}",
                f"cannot be written ({exc.strerror or exc})",
                "Fix the directory's owner or permissions, or set TURBO_HOME to a directory "
                "you own.",
            ) from exc

    def write(self, line: str) -> None:
        self._fh.write(f"{time.strftime('%H:%M:%S')} {redact(line.rstrip())}\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TaskLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ev is not None:
            self.write(f"failed: {ev!r}")
        self.close()
