"""A redacting tee for a detached server: its output (stdin) into a private log file.

A detached ``vllm serve`` outlives the command that started it, so nothing of ours is left to
filter what it prints; vLLM logs every non-default argument at startup, secrets included. This
small process stays behind instead: ``python -m turbo.logtee LOG`` appends each line to LOG
(created 0600) with secret values masked. The values arrive in its environment
(``TURBO_REDACT``, a JSON list), never on its command line, which every user can read. It ends
when the server and all its children have closed their output. turbo/serve_process.py starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from turbo.console import open_private, redact, register_secrets
from turbo.serve_types import REDACT_ENV


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
        register_secrets(str(v) for v in json.loads(os.environ.pop(REDACT_ENV, "[]")))
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
