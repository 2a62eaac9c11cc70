"""The vocabulary of a check: one fact about the host or a launch, its verdict, what to do.

doctor, serve's preflight, the environment rows and the toolchain gate all speak it, so it sits
on the ground floor and imports nothing of ours: a stage that needs a verdict never has to reach
up into a command for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def failed(checks: Sequence[Check]) -> list[Check]:
    """The checks whose verdict is FAIL, in their order."""
    return [c for c in checks if c.status == FAIL]


def exit_code(checks: Sequence[Check]) -> int:
    """1 when any check failed (WARN never stops anything), else 0."""
    return 1 if failed(checks) else 0
