"""A redacting tee for a detached server: its output (stdin) into a private log file.

A detached ``vllm serve`` outlives the command that started it, so nothing of ours is left to
filter what it prints; vLLM logs every non-default argument at startup, secrets included. This
small process stays behind instead: ``python -m turbo.logtee LOG`` appends each line to LOG
(created 0600) with secret values masked. The values arrive in its environment
(``TURBO_REDACT``, a JSON list), never on its command line, which every user can read. It ends
when the server and all its children have closed their output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from turbo import paths
from turbo.console import open_private, redact, register_secrets

ENV = "TURBO_REDACT"


def start(log: Path, secrets: Sequence[str]) -> subprocess.Popen[bytes]:
    """The tee, in a session of its own (a stop of the server's group does not cut its log)."""
    env = dict(os.environ)
    env[ENV] = json.dumps(list(secrets))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(paths.repo_root()), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.Popen(
        [sys.executable, "-m", "turbo.logtee", str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


class TeedProcess(subprocess.Popen[bytes]):
    """A server whose output goes through a tee: it counts as exited once the tee has written
    its last line too, so a log tail read right after an early exit is complete."""

    tee: subprocess.Popen[bytes] | None = None

    def poll(self) -> int | None:
        rc = super().poll()
        if rc is not None and self.tee is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.tee.wait(timeout=5)
        return rc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m turbo.logtee LOG  (secrets in $TURBO_REDACT)", file=sys.stderr)
        return 2
    # The server's own signals (stop, Ctrl-C in the shell that started it) are not ours:
    # end only at end of input, so the server's last lines are kept.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        register_secrets(str(v) for v in json.loads(os.environ.pop(ENV, "[]")))
    with (
        open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False) as stdin,
        open_private(Path(args[0])) as out,
    ):
        for line in stdin:
            out.write(redact(line.rstrip("\n")) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
