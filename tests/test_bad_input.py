"""Every option of every task, given a wrong type, an empty value and an out-of-range value,
ends in one line on stderr and a non-zero exit, never a traceback.

The table is checked against tasks.py itself: a new task or option without a row fails
``test_every_option_has_a_row``, so the table cannot fall behind the command line.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from invoke import Exit, Program

import tasks
from tests.conftest import REPO
from tests.test_cli import TASKS

NA = None  # this kind of bad value does not exist for the option (the reason is in `why`)
FILE = str(REPO / "README.md")  # an existing file where a directory is wanted
DIR = str(REPO / "turbo")  # an existing directory where a file is wanted
MISSING = "/nonexistent/turbo-test-path"


@dataclass(frozen=True)
class Row:
    wrong: str | None  # a value of the wrong type or shape
    empty: str | None  # the empty value (None: the option is a flag, or empty means something)
    out: str | None  # the right type, but out of range / not allowed
    why: str = ""  # why a column is NA


FLAG = Row("maybe", NA, NA, "a boolean flag takes no value")
PORT = Row("abc", "", "0")
EXISTING_DIR = Row(FILE, "", MISSING)
EXISTING_FILE = Row(DIR, "", MISSING)
DIR_TARGET = Row(FILE, "", FILE + "/sub", "no range: any new or existing directory")
PYTHON = Row(FILE, "", MISSING)
REF = Row("a b", "", "-x")
IP = Row("abc", "", "300.1.1.1")

ROWS: dict[tuple[str, str], Row] = {
    ("adopt-model", "dir"): EXISTING_DIR,
    ("adopt-model", "repo"): Row("a b", "", "-x"),
    ("adopt-model", "force"): FLAG,
    ("adopt-model", "dry-run"): FLAG,
    ("adopt-vllm", "vllm"): Row(DIR, "", MISSING),
    ("adopt-vllm", "force"): FLAG,
    ("adopt-vllm", "dry-run"): FLAG,
    ("adopt-vllm", "json"): FLAG,
    ("bench", "url"): Row("8011", "", "http://127.0.0.1:99999"),
    ("bench", "dry-run"): FLAG,
    ("bench", "port"): PORT,
    ("bench", "served-name"): Row("a b", "", NA, "any single word names a model"),
    ("bench", "prompt-lens"): Row("abc", "", "0"),
    ("bench", "output-lens"): Row("abc", "", "0"),
    ("bench", "concurrency"): Row("abc", "", "0"),
    ("bench", "repeats"): Row("x", "", "0"),
    ("bench", "tool"): Row("7", "", "fast"),
    ("bench", "model"): EXISTING_DIR,
    ("bench", "out"): DIR_TARGET,
    ("bench", "no-chart"): FLAG,
    ("bench", "timeout"): Row("x", "", "0"),
    ("bench", "json"): FLAG,
    ("bench", "roofline"): FLAG,
    ("bench", "bandwidth-gbs"): Row("fast", "", "-5"),
    ("bench", "context"): Row("x", "", "0"),
    ("bench", "kv-dtype"): Row("7", "", "int3"),
    ("build-stamp", "compare"): EXISTING_FILE,
    ("build-stamp", "json"): FLAG,
    ("build-vllm", "src"): EXISTING_DIR,
    ("build-vllm", "ref"): REF,
    ("build-vllm", "repo"): Row("a b", "", "-oProxyCommand=x"),
    ("build-vllm", "patch-ref"): REF,
    ("build-vllm", "target"): Row("7", NA, "rocm", "empty selects vLLM's Python-only build"),
    ("build-vllm", "arch-list"): Row("abc", "", "garbage"),
    ("build-vllm", "max-jobs"): Row("abc", "", "-3"),
    ("build-vllm", "nvcc-threads"): Row("abc", "", "0"),
    ("build-vllm", "cutlass-src"): EXISTING_DIR,
    ("build-vllm", "flash-attn-src"): EXISTING_DIR,
    ("build-vllm", "flashmla-src"): EXISTING_DIR,
    ("build-vllm", "qutlass-src"): EXISTING_DIR,
    ("build-vllm", "triton-kernels-src"): EXISTING_DIR,
    ("build-vllm", "python"): PYTHON,
    ("build-vllm", "no-runtime-deps"): FLAG,
    ("build-vllm", "pip-deps"): FLAG,
    ("build-vllm", "force"): FLAG,
    ("build-vllm", "verbose"): FLAG,
    ("build-vllm", "dry-run"): FLAG,
    ("build-vllm", "json"): FLAG,
    ("cluster.detect", "sysfs"): EXISTING_DIR,
    ("cluster.detect", "head"): IP,
    ("cluster.detect", "json"): FLAG,
    ("cluster.link-check", "log"): EXISTING_FILE,
    ("demo", "port"): PORT,
    ("demo", "keep"): FLAG,
    ("demo", "dry-run"): FLAG,
    ("doctor", "json"): FLAG,
    ("fetch-model", "dest"): DIR_TARGET,
    ("fetch-model", "variant"): Row("7", "", "base"),
    ("fetch-model", "revision"): Row("a b", "", "main..dev"),
    ("fetch-model", "verify"): FLAG,
    ("fetch-model", "offline"): FLAG,
    ("fetch-model", "xet"): FLAG,
    ("fetch-model", "adopt-existing"): FLAG,
    ("fetch-model", "dry-run"): FLAG,
    ("fetch-model", "json"): FLAG,
    ("install-wheel", "wheel"): Row(DIR, "", MISSING),
    ("install-wheel", "python"): PYTHON,
    ("install-wheel", "target"): Row("7", NA, "rocm", "empty selects CPU/test wheels"),
    ("install-wheel", "no-deps"): FLAG,
    ("install-wheel", "dry-run"): FLAG,
    ("install-wheel", "json"): FLAG,
    ("kernels.bench", "rows"): Row("x", "", "0"),
    ("kernels.bench", "cols"): Row("x", "", "17"),
    ("kernels.bench", "iters"): Row("x", "", "0"),
    ("kernels.bench", "repeats"): Row("x", "", "-1"),
    ("kernels.bench", "variants"): Row("7", "", "fast"),
    ("kernels.bench", "dtypes"): Row("7", "", "float64"),
    ("kernels.bench", "layouts"): Row("7", "", "diagonal"),
    ("kernels.bench", "out"): Row(DIR, "", FILE + "/sub"),
    ("kernels.bench", "json"): FLAG,
    ("kernels.bench", "dry-run"): FLAG,
    ("kernels.compile-check", "archs"): Row("x", "", "121b"),
    ("kernels.compile-check", "force-software"): FLAG,
    ("kernels.compile-check", "json"): FLAG,
    ("kernels.probe", "arch"): Row("x", "", "12.1a"),
    ("kernels.probe", "dry-run"): FLAG,
    ("kernels.probe", "json"): FLAG,
    ("patches.apply", "src"): EXISTING_DIR,
    ("patches.apply", "ref"): REF,
    ("patches.apply", "dry-run"): FLAG,
    ("patches.apply", "json"): FLAG,
    ("patches.archs", "src"): EXISTING_DIR,
    ("patches.archs", "arch-list"): Row("abc", "", "garbage"),
    ("patches.archs", "json"): FLAG,
    ("patches.check", "src"): EXISTING_DIR,
    ("patches.check", "ref"): REF,
    ("patches.check", "json"): FLAG,
    ("patches.matrix", "versions"): Row("abc", "", NA, "any release; the index decides"),
    ("patches.matrix", "all"): FLAG,
    ("patches.matrix", "json"): FLAG,
    ("patches.matrix", "doc"): Row(DIR, "", FILE + "/sub"),
    ("patches.matrix", "dry-run"): FLAG,
    ("patches.refresh", "src"): EXISTING_DIR,
    ("patches.refresh", "check"): FLAG,
    ("patches.refresh", "dry-run"): FLAG,
    ("patches.revert", "src"): EXISTING_DIR,
    ("patches.revert", "force"): FLAG,
    ("patches.revert", "dry-run"): FLAG,
    ("patches.revert", "json"): FLAG,
    ("serve", "profile"): Row("7", "", "turbo"),
    ("serve", "port"): PORT,
    ("serve", "model"): Row(FILE, "", NA, "a missing model is a preflight check"),
    ("serve", "host"): Row("a b", "", "300.1.1.1"),
    ("serve", "set"): Row("novalue", "", "gpu-memory-utilization=5"),
    ("serve", "head"): IP,
    ("serve", "node-ip"): IP,
    ("serve", "ifname"): Row("a/b", "", "averyverylongname0"),
    ("serve", "hca"): Row("a b", "", "rocep1s0f1,,x"),
    ("serve", "gid-index"): Row("abc", "", "-2"),
    ("serve", "detach"): FLAG,
    ("serve", "health-timeout"): Row("soon", "", "0"),
    ("serve", "warmup"): FLAG,
    ("serve", "dry-run"): FLAG,
    ("serve", "json"): FLAG,
    ("service.install", "profile"): Row("7", "", "turbo", "checked by serve's profile list"),
    ("service.install", "user"): FLAG,
    ("service.install", "system"): FLAG,
    ("service.install", "name"): Row("a/b", "", "../etc"),
    ("service.install", "unit-dir"): DIR_TARGET,
    ("service.install", "port"): PORT,
    ("service.install", "model"): Row(FILE, "", NA, "a missing model is a preflight check"),
    ("service.install", "host"): Row("a b", "", "300.1.1.1"),
    ("service.install", "set"): Row("novalue", "", "gpu-memory-utilization=5"),
    ("service.install", "head"): IP,
    ("service.install", "node-ip"): IP,
    ("service.install", "ifname"): Row("a/b", "", "averyverylongname0"),
    ("service.install", "hca"): Row("a b", "", "rocep1s0f1,,x"),
    ("service.install", "gid-index"): Row("abc", "", "-2"),
    ("service.install", "health-timeout"): Row("soon", "", "0"),
    ("service.install", "warmup"): FLAG,
    ("service.install", "requires"): Row("a/b", NA, "../x", "empty means no Ray head unit"),
    ("service.install", "enable"): FLAG,
    ("service.install", "dry-run"): FLAG,
    ("service.install", "json"): FLAG,
    ("service.status", "unit-dir"): EXISTING_DIR,
    ("service.status", "json"): FLAG,
    ("service.uninstall", "name"): Row("a/b", "", "../etc"),
    ("service.uninstall", "profile"): Row("a/b", "", "../etc"),
    ("service.uninstall", "user"): FLAG,
    ("service.uninstall", "system"): FLAG,
    ("service.uninstall", "unit-dir"): EXISTING_DIR,
    ("service.uninstall", "purge"): FLAG,
    ("service.uninstall", "dry-run"): FLAG,
    ("stop", "port"): PORT,
    ("stop", "all"): FLAG,
    ("stop", "timeout"): Row("x", "", "-1"),
    ("stop", "dry-run"): FLAG,
    ("verify", "url"): Row("8011", "", "http://127.0.0.1:99999"),
    ("verify", "port"): PORT,
    ("verify", "served-name"): Row("a b", "", NA, "any single word names a model"),
    ("verify", "wait"): Row("x", "", "-1"),
    ("verify", "max-tokens"): Row("x", "", "0"),
    ("verify", "timeout"): Row("x", "", "0"),
    ("verify", "json"): FLAG,
    ("wheel", "dest"): DIR_TARGET,
    ("wheel", "python"): PYTHON,
    ("wheel", "dry-run"): FLAG,
    ("wheel", "json"): FLAG,
}


def _options(name: str) -> dict[str, object]:
    return {a.names[0]: a for a in TASKS[name].get_arguments()}


def test_every_option_has_a_row() -> None:
    have = {(t, o) for t in TASKS for o in _options(t)}
    missing = sorted(have - set(ROWS))
    stale = sorted(set(ROWS) - have)
    assert missing == [], f"options without a bad-input row in {__file__}: {missing}"
    assert stale == [], f"rows for options that no longer exist: {stale}"


def _cases() -> list[tuple[str, str, str, str]]:
    out = []
    for (t, o), row in sorted(ROWS.items()):
        for column in ("wrong", "empty", "out"):
            value = getattr(row, column)
            if value is not None:
                out.append((t, o, column, value))
    return out


def _argv(task: str, option: str, value: str) -> list[str]:
    opts = _options(task)
    arg = opts[option]
    positional = [a.names[0] for a in TASKS[task].get_arguments() if a.positional]
    argv = [task]
    if getattr(arg, "positional", False):
        argv.append(value)
    else:
        # A flag gets its bad value as a separate word, as a user would type it.
        argv += [f"--{option}", value] if arg.kind is bool else [f"--{option}={value}"]
        argv += ["wheel.whl" for p in positional if p == "wheel"]
        argv += [str(REPO) for p in positional if p == "dir"]
    if "dry-run" in opts and option != "dry-run":
        argv.append("--dry-run")
    return argv


def run_inprocess(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """invoke's own Program on tasks.ns: the parser, Exit handling and task bodies of the real
    command, without a new interpreter per case."""
    try:
        Program(namespace=tasks.ns, binary="invoke").run(["invoke", *argv], exit=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A case the checks miss must still end fast: no Hub, no server on the pinned port.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODEL", str(tmp_path / "no-model"))


@pytest.mark.parametrize(("task", "option", "column", "value"), _cases())
def test_bad_value_is_one_line(
    task: str, option: str, column: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(task, option, value)
    code, _, err = run_inprocess(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"`invoke {' '.join(argv)}` exited 0 ({column} value accepted)"
    assert "Traceback" not in err
    assert len(lines) == 1, f"`invoke {' '.join(argv)}` wrote {len(lines)} lines:\n{err}"
    assert f"--{option}" in lines[0] or repr(value) in lines[0] or value in lines[0], lines[0]
    if _options(task)[option].kind is not bool:  # type: ignore[attr-defined]
        assert code == 2, f"`invoke {' '.join(argv)}`: exit {code}, not 2 (bad input)"


def test_rows_are_real() -> None:
    """Each NA has its reason, and each value option has at least two bad values."""
    for key, row in ROWS.items():
        given = [v for v in (row.wrong, row.empty, row.out) if v is not None]
        if len(given) < 3:
            assert row.why, f"{key}: a column is NA without a reason"


def test_stock_invoke_command_gives_one_line() -> None:
    """The same checks through the real `invoke` command (what pixi tasks run)."""
    for argv, flag in ((["serve", "--port", "abc", "--dry-run"], "--port"),
                       (["build-vllm", "--max-jobs=-3", "--dry-run"], "--max-jobs"),
                       (["verify", "--port=0"], "--port")):
        proc = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0], proc.stderr


def test_dry_run_and_json_short_flags_are_one_convention() -> None:
    """-n is --dry-run and -j is --json in every task; no other option takes those letters."""
    for name in TASKS:
        for arg in TASKS[name].get_arguments():
            shorts = {n for n in arg.names if len(n) == 1}
            assert all(n.isalpha() for n in shorts), (name, arg.names)
            if arg.names[0] == "dry-run":
                assert shorts == {"n"}, (name, arg.names)
            elif arg.names[0] == "json":
                assert shorts == {"j"}, (name, arg.names)
            else:
                assert not shorts & {"n", "j"}, (name, arg.names)


# Tasks that only read and report; every other task acts and so has --dry-run.
READ_ONLY = {"build-stamp", "cluster.detect", "cluster.link-check", "doctor",
             "kernels.compile-check", "patches.archs", "patches.check", "service.status",
             "verify"}
# Acts but has no --dry-run yet.
MISSING_DRY_RUN: set[str] = set()


def test_every_task_that_acts_has_dry_run() -> None:
    lacking = {n for n, t in TASKS.items()
               if "dry-run" not in {a.names[0] for a in t.get_arguments()}}
    assert lacking - READ_ONLY - MISSING_DRY_RUN == set(), "tasks that act need --dry-run"
    assert lacking >= MISSING_DRY_RUN, "has --dry-run now: drop it from MISSING_DRY_RUN"


def test_list_descriptions_are_whole_sentences() -> None:
    """`invoke --list` shows the docstring's first line: it must be one complete sentence."""
    for name, t in TASKS.items():
        first = (t.body.__doc__ or "").strip().splitlines()[0]
        assert first.rstrip().endswith((".", "?")), f"{name}: first line is cut: {first!r}"
        assert len(first) <= 100, f"{name}: first docstring line too long for --list"


def test_missing_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """invoke's own parse error quotes the argument object: it must read as the flag."""
    code, _, err = run_inprocess(["serve", "--port"], capsys)
    assert code != 0 and err.strip() == "Flag --port needed value and was not given one!"


def test_a_float_option_without_its_own_check_is_still_one_line() -> None:
    """invoke casts a float option with float() in its parser, as it does int()."""
    from turbo.options import CheckedTask

    def body(c: object, share: float = 0.5) -> None:
        raise AssertionError("the task must not run")

    t = CheckedTask(body, name="demo")
    (arg,) = t.get_arguments()
    for bad in ("lots", "", "nan"):
        with pytest.raises(Exit) as exc:
            arg.set_value(bad)
        assert exc.value.code == 2 and "--share" in str(exc.value.message)
    arg.set_value("0.25")
    assert arg.value == 0.25
