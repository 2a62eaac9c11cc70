"""Output helpers shared by every stage: tables, secret redaction, log files."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from turbo import paths
from turbo.errors import TurboError

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY")
_SECRET_KEY = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY)", re.IGNORECASE)
_TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})\b")
REDACTED = "***"


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Remove secret values (from the environment and by shape) from free text."""
    source = os.environ if env is None else env
    for key in SECRET_ENV:
        value = source.get(key)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with secret-looking variables masked, for --dry-run and logs."""
    return {k: (REDACTED if is_secret_key(k) and v else v) for k, v in env.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """Mask the value after flags such as ``--api-key`` and any token-shaped word."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = word.partition("=")
        if flag.startswith("--") and is_secret_key(flag.replace("-", "_")):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(word)
                hide_next = True
            continue
        out.append(redact(word))
    return out


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
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
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
