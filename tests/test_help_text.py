"""Every task's --help, word for word: the help words live in turbo/data/help.toml, far from
the task signatures they describe, so a change to them (or to an option's name or default) must
be a deliberate one. After a deliberate change, regenerate with
``python tests/test_help_text.py > tests/data/invoke-help.txt`` and review the diff."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from invoke import Program

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "invoke-help.txt"


def help_dump() -> str:
    """``invoke --list`` and ``invoke --help TASK`` for every task, as a user sees them on an
    80-column terminal."""
    sys.path.insert(0, str(REPO))
    try:
        import tasks
    finally:
        sys.path.remove(str(REPO))
    def run(*argv: str) -> str:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            Program(namespace=tasks.ns, binary="invoke").run(["invoke", *argv], exit=False)
        return buf.getvalue()

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        out = [run("--list")]
        for name in sorted(tasks.ns.task_names):
            out.append(f"=== {name}\n" + run("--help", name))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "".join(out)


def test_every_task_help_is_unchanged() -> None:
    assert help_dump() == GOLDEN.read_text(encoding="utf-8")


if __name__ == "__main__":
    sys.stdout.write(help_dump())
