"""What a command hands back to the command line: text, data, exit code.

Every command the tasks call returns an ``Outcome``, so ``tasks.py`` only maps options to a
call and prints one thing: ``data`` as JSON under ``--json``, ``text`` otherwise. Progress that
a long command shows while it works goes to its ``say`` callback (stderr), not into ``text``,
so stdout stays the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """The result of one command.

    ``text`` is what a person reads (may be empty: the command printed as it went); ``data`` is
    the same result as JSON-able data (``None`` when the command has none); ``code`` is the exit
    status (0 ok, 1 a check failed, 2 bad input, 130 interrupted).
    """

    text: str = ""
    data: Any = None
    code: int = 0

    def render(self, as_json: bool) -> str:
        """What to print on stdout: JSON when asked for and there is data, else the text."""
        if as_json and self.data is not None:
            return json.dumps(self.data, indent=2, sort_keys=False)
        return self.text


def done(text: str = "", data: Any = None) -> Outcome:
    """A command that succeeded."""
    return Outcome(text=text, data=data, code=0)


def checked(text: str, data: Any, failed: bool) -> Outcome:
    """A command whose result is a verdict: exit 1 when something failed."""
    return Outcome(text=text, data=data, code=1 if failed else 0)
