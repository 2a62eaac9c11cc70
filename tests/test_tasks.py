"""tasks.py's one runner: a command's Outcome printed, its code the exit; failures one line."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from invoke import Exit, Program

import tasks
from tests.conftest import REPO
from tests.serve_fixtures import rdma_device
from turbo.errors import TurboError, UsageError
from turbo.outcome import Outcome, checked, done
from turbo.task_help import details as task_help_details
from turbo.task_help import options_help


def test_run_prints_text_and_returns_on_success(capsys: pytest.CaptureFixture[str]) -> None:
    tasks._run(lambda: done("2 rows", {"rows": 2}))
    assert capsys.readouterr().out == "2 rows\n"


def test_run_prints_data_under_json(capsys: pytest.CaptureFixture[str]) -> None:
    tasks._run(lambda: done("2 rows", {"rows": 2}), as_json=True)
    assert capsys.readouterr().out == '{\n  "rows": 2\n}\n'


def test_run_prints_nothing_for_an_empty_text(capsys: pytest.CaptureFixture[str]) -> None:
    tasks._run(lambda: Outcome())
    assert capsys.readouterr().out == ""


def test_run_exits_with_the_outcome_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as exc:
        tasks._run(lambda: checked("FAIL gpu", [], failed=True))
    assert exc.value.code == 1
    assert capsys.readouterr().out == "FAIL gpu\n"  # the verdict is printed before the exit


def test_run_turns_a_turbo_error_into_one_redacted_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    token = "hf_" + "a" * 30

    def fails() -> Outcome:
        raise UsageError("fetch", f"token {token} refused", "Log in again.")

    with pytest.raises(Exit) as exc:
        tasks._run(fails)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fetch") and err.count("\n") == 1
    assert token not in err


def test_run_keeps_the_error_exit_code() -> None:
    def fails() -> Outcome:
        raise TurboError("x", "y", "z", exit_code=3)

    with pytest.raises(Exit) as exc:
        tasks._run(fails)
    assert exc.value.code == 3


def test_run_turns_ctrl_c_into_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> Outcome:
        raise KeyboardInterrupt

    with pytest.raises(Exit) as exc:
        tasks._run(interrupted)
    assert exc.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted: ")


def _task_functions() -> set[str]:
    tree = ast.parse((REPO / "tasks.py").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any("task" in ast.unparse(d) for d in node.decorator_list)}


def test_help_book_has_a_table_per_task_and_no_other() -> None:
    from turbo import task_help

    assert set(task_help._book()) == _task_functions()


def test_help_comes_from_the_book() -> None:
    assert tasks.serve.help == options_help("serve")
    assert "RoCE" in tasks.serve.help["ifname"]


def test_task_help_is_the_summary_then_the_books_details() -> None:
    doc = tasks.serve.body.__doc__ or ""
    summary, blank, *details = doc.splitlines()
    assert summary.startswith("Serve a profile with vLLM") and blank == ""
    assert "\n".join(details) == task_help_details("serve")
    assert "--detach for the background" in doc
    # A task without details keeps its docstring as it is.
    assert tasks.service_status.body.__doc__ == (
        "List vllm-turbo units (user and system) with systemd's active/enabled state.")


def _invoke(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        Program(namespace=tasks.ns, binary="invoke").run(["invoke", *argv], exit=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cluster_detect_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The loopback interface stands in for the RoCE netdev: its address is real.
    rdma_device(tmp_path, "rocep1s0f1", "lo", ip="127.0.0.1")
    code, out, _ = _invoke(["cluster.detect", "--sysfs", str(tmp_path)], capsys)
    assert code == 0
    assert out.splitlines()[:3] == ["RoCE netdev:  lo (127.0.0.1)", "RDMA devices: rocep1s0f1",
                                    "GID index:    3"]
    code, out, _ = _invoke(["cluster.detect", "--sysfs", str(tmp_path), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and (data["ifname"], data["hca"], data["gid_index"]) == (
        "lo", ["rocep1s0f1"], 3)


def test_cluster_link_check_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "serve-tp2-serve-1.log"
    log.write_text("NCCL INFO NET/Socket : Using [0]enp1s0f1np1:192.168.100.10<0>\n")
    code, out, _ = _invoke(["cluster.link-check", "--log", str(log)], capsys)
    assert code == 1 and out.startswith(f"NCCL transport in {log}: TCP sockets")
    log.write_text("NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE\n")
    code, out, _ = _invoke(["cluster.link-check", "--log", str(log)], capsys)
    assert code == 0 and "RDMA over RoCE" in out


def test_progress_goes_to_stderr_under_json(capsys: pytest.CaptureFixture[str]) -> None:
    tasks._say(True)("fetching")
    tasks._say(False)("building")
    out = capsys.readouterr()
    assert (out.out, out.err) == ("building\n", "fetching\n")


def test_check_table_names_only_tasks() -> None:
    from turbo.task_checks import CHECKS

    assert set(CHECKS) <= _task_functions()
    for name, checks in CHECKS.items():
        assert getattr(tasks, name).checks == checks, name
