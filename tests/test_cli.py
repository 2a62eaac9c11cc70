"""The invoke CLI: every task listed, every option explained, errors are one line."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from invoke import Collection, Task

import tasks
from tests.conftest import REPO


def all_tasks(ns: Collection, prefix: str = "") -> dict[str, Task]:  # type: ignore[type-arg]
    out = {f"{prefix}{name}": t for name, t in ns.tasks.items()}
    for sub_name, sub in ns.collections.items():
        out.update(all_tasks(sub, f"{prefix}{sub_name}."))
    return out


TASKS = all_tasks(tasks.ns)


def test_invoke_list_shows_every_task() -> None:
    proc = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    for name in TASKS:
        assert name in proc.stdout, name


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_option_has_help(name: str) -> None:
    t = TASKS[name]
    params = [p for p in inspect.signature(t.body).parameters if p != "c"]
    undocumented = [p for p in params if p not in t.help and p.replace("_", "-") not in t.help]
    assert undocumented == [], f"invoke {name}: options without help: {undocumented}"
    assert (t.body.__doc__ or "").strip(), f"invoke {name} has no docstring"
