"""The help text of every task option, kept as data in turbo/data/help.toml.

``invoke --help TASK`` prints one line per option; the words live in one TOML table per task
(named as the task's function in tasks.py) so tasks.py holds only the mapping from options to
calls. The task decorator in ``turbo.options`` reads a task's table here.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

HELP_RESOURCE = "help.toml"


@cache
def _book() -> dict[str, dict[str, str]]:
    text = resources.files("turbo.data").joinpath(HELP_RESOURCE).read_text(encoding="utf-8")
    return tomllib.loads(text)


def options_help(task_function: str) -> dict[str, str]:
    """Option name -> help line for the task whose function is ``task_function``.

    A task with no table has no option help (tests/test_cli.py fails on any option without).
    """
    return dict(_book().get(task_function, {}))
