"""The one exception type the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations


class TurboError(Exception):
    """An expected failure: what failed, why, and what to do next.

    The CLI prints ``str(err)`` as one line and exits with ``err.exit_code``; no traceback,
    because the user can act on the message and a traceback would bury it.
    """

    exit_code: int = 1

    def __init__(self, what: str, why: str, fix: str, *, exit_code: int | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.what}: {self.why}. {self.fix}".rstrip()


class UsageError(TurboError):
    """Bad input from the command line (unknown profile, malformed option)."""

    exit_code = 2
