"""Output helpers shared by every stage: tables, secret redaction, log files."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

from turbo import paths
from turbo.errors import TurboError

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY")
_SECRET_KEY = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY)", re.IGNORECASE)
_TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})\b")
# Credentials inside a URL (HF_ENDPOINT=http://user:pass@mirror): the password goes; a userinfo
# without a password is usually a token itself (https://TOKEN@host), so all of it goes.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):([^/\s@]+)@")
_URL_USERINFO = re.compile(r"(?<=://)([^/\s:@]+)@")
REDACTED = "***"
# Values known to be secret in this process (an --api-key given after --, a key moved into
# the environment): hidden wherever they appear, whatever their shape.
_KNOWN: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Hide these values in everything redact() sees from now on (short ones excepted: a
    2-character "secret" would blank out ordinary words)."""
    _KNOWN.update(v for v in values if v and len(v) >= 4)


def known_secrets() -> list[str]:
    return sorted(_KNOWN)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Remove secret values (from the environment and by shape) from free text."""
    source = os.environ if env is None else env
    values = {source.get(key, "") for key in SECRET_ENV} | _KNOWN
    # Longest first: a secret that contains another is hidden whole.
    for value in sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _URL_USERINFO.sub(f"{REDACTED}@", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def strip_url_credentials(url: str) -> str:
    """The URL without its userinfo, for records that outlive the run (a manifest)."""
    return re.sub(r"(?<=://)[^/\s@]*@", "", url)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with secret-looking variables masked, for --dry-run and logs."""
    return {k: (REDACTED if is_secret_key(k) and v else v) for k, v in env.items()}


def argv_secrets(argv: Sequence[str]) -> list[str]:
    """The secret values in an argv: every value of a secret-named flag (``--api-key K1 K2``,
    ``--hf-token=T``, ``--db-password P``) and every token-shaped word."""
    found: list[str] = []
    hiding = False
    for word in argv:
        flag, eq, value = word.partition("=")
        if word.startswith("-"):
            hiding = False
            if flag.startswith("--") and is_secret_key(flag.replace("-", "_")):
                if eq:
                    found.append(value)
                else:
                    hiding = True  # every value up to the next flag (vLLM's nargs="+")
                continue
        if hiding:
            found.append(word)
        found += _TOKEN_SHAPES.findall(word)
    return [v for v in found if v]


def redact_argv(argv: Sequence[str]) -> list[str]:
    """Mask the values of flags such as ``--api-key`` and any token-shaped word."""
    out: list[str] = []
    hiding = False
    for word in argv:
        flag, eq, _ = word.partition("=")
        if word.startswith("-"):
            hiding = False
            if flag.startswith("--") and is_secret_key(flag.replace("-", "_")):
                if eq:
                    out.append(f"{flag}={REDACTED}")
                else:
                    out.append(word)
                    hiding = True
                continue
        out.append(REDACTED if hiding else redact(word))
    return out


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (logs: they may quote a secret a redaction missed)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)  # made wider by an older version or a umask
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
