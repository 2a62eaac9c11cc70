"""The words of the command line, kept as data in turbo/data/help.toml.

``invoke --list`` prints each task's summary (the first line of its docstring in tasks.py);
``invoke --help TASK`` adds the task's ``details`` and one line per option, both read from the
task's table here (named as the task's function), so tasks.py holds only options and calls.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

HELP_RESOURCE = "help.toml"


@cache
def _book() -> dict[str, Any]:
    text = resources.files("turbo.data").joinpath(HELP_RESOURCE).read_text(encoding="utf-8")
    return tomllib.loads(text)


def options_help(task_function: str) -> dict[str, str]:
    """Option name -> help line for the task whose function is ``task_function``.

    A task with no table has no option help (tests/test_cli.py fails on any option without).
    """
    return dict(_book().get(task_function, {}).get("options", {}))


def details(task_function: str) -> str:
    """What ``--help`` says about the task after its summary line ("" when nothing)."""
    return str(_book().get(task_function, {}).get("details", ""))


def full_doc(summary: str | None, task_function: str) -> str | None:
    """The task's whole help text: its docstring's summary, a blank line, its details."""
    more = details(task_function)
    if not more:
        return summary
    return f"{(summary or '').rstrip()}\n\n{more}"
