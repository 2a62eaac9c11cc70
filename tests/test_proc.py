"""turbo.proc against real child processes (this Python, ``sys.executable -c ...``): what a
captured call gives back, how a missing, unstartable or slow program is reported, what a
streamed call sends where, how Ctrl-C and a failing callback stop the child, and the one
redacted command line every dry run and log shows."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from turbo import proc
from turbo.errors import TurboError
from turbo.host import Host

PY = sys.executable
TOKEN = "hf_" + "Ab3" * 8
API_KEY = "key-for-proc-test-77"


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- capture
def test_capture_reads_stdout_stderr_apart_with_env_overlay_and_cwd(tmp_path: Path) -> None:
    code = (
        "import os, sys; print(os.environ['TURBO_PROC_T']); print(os.environ.get('HOME', '-'));"
        "print(os.getcwd()); print('on err', file=sys.stderr); sys.exit(3)"
    )
    res = proc.capture(py(code), timeout=30, env={"TURBO_PROC_T": "overlay"}, cwd=tmp_path)
    out = res.stdout.splitlines()
    assert out[0] == "overlay"
    assert out[1] == os.environ.get("HOME", "-")  # the overlay sits on the real environment
    assert Path(out[2]).resolve() == tmp_path.resolve()
    assert res.stderr.strip() == "on err"
    assert (res.rc, res.ok, res.fault) == (3, False, "")
    assert res.why() == "on err"
    with pytest.raises(TurboError) as err:
        res.check("probing the thing", "Fix the thing.")
    assert err.value.line() == "probing the thing: on err. Fix the thing."


def test_capture_base_env_replaces_the_process_environment() -> None:
    code = "import os; print(sorted(k for k in os.environ if k.startswith('TURBO_PROC')))"
    res = proc.capture(py(code), timeout=30, base_env={"TURBO_PROC_A": "1"},
                       env={"TURBO_PROC_B": "2"})
    assert res.ok
    assert res.stdout.strip() == "['TURBO_PROC_A', 'TURBO_PROC_B']"


def test_capture_success_and_stdin() -> None:
    res = proc.capture(py("import sys; print(sys.stdin.read().upper())"), timeout=30,
                       stdin="fed in")
    assert res.ok and res.stdout.strip() == "FED IN" and res.why() == ""
    assert res.check("x", "y") is res
    # Without stdin text the child reads /dev/null, never our stdin (here a pipe nobody
    # writes to, as a terminal nobody types into: reading it would wait past the timeout).
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        res = proc.capture(py("import sys; print(repr(sys.stdin.read()))"), timeout=10)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert res.ok and res.stdout.strip() == "''"


def test_capture_missing_program_is_a_result_and_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tool")
    res = proc.capture([missing, "--version"], timeout=30)
    assert (res.rc, res.fault, res.ok) == (127, proc.MISSING, False)
    assert "No such file" in res.error
    with pytest.raises(TurboError) as err:
        res.check("probing the tool", "Install it.")
    assert err.value.line() == (
        f"probing the tool: {missing} is not installed (not found). Install it."
    )


def test_capture_missing_cwd_is_not_a_missing_program(tmp_path: Path) -> None:
    res = proc.capture(py("print(1)"), timeout=30, cwd=tmp_path / "gone")
    assert (res.rc, res.fault) == (126, proc.UNSTARTABLE)
    assert res.why().startswith(f"cannot start {PY} (")


def test_capture_unexecutable_file_is_unstartable(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o600)
    res = proc.capture([str(tool)], timeout=30)
    assert (res.rc, res.fault) == (126, proc.UNSTARTABLE)
    assert "Permission denied" in res.why()


def test_capture_timeout_kills_the_child_and_says_so(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    code = f"import time; print('started', flush=True); time.sleep(20); open({str(marker)!r}, 'w')"
    t0 = time.monotonic()
    res = proc.capture(py(code), timeout=1.0)
    assert time.monotonic() - t0 < 15
    assert (res.rc, res.fault, res.ok) == (124, proc.TIMEOUT, False)
    assert "gave no answer in time" in res.why() and "1" in res.why()
    assert res.stdout.strip() == "started"  # what it said before the timer ran out is kept
    time.sleep(0.2)
    assert not marker.exists()


def test_capture_log_records_the_redacted_command_its_output_and_exit() -> None:
    lines: list[str] = []
    argv = [*py("print('hello'); raise SystemExit(2)"), "--api-key", API_KEY]
    res = proc.capture(argv, timeout=30, env={"HF_TOKEN": TOKEN}, log=lines.append)
    assert res.rc == 2
    assert lines[0].startswith("$ HF_TOKEN='***' ")
    assert lines[0].endswith("--api-key '***'")
    assert lines[1:] == ["hello", "exit 2"]
    assert not any(TOKEN in ln or API_KEY in ln for ln in lines)


def test_capture_undecodable_output_is_replaced_not_raised() -> None:
    res = proc.capture(py("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"),
                       timeout=30)
    assert res.ok and res.stdout.startswith("ok ") and res.stdout.endswith(" end")


# --------------------------------------------------------------------------- describe
def test_describe_is_pasteable_and_redacted() -> None:
    argv = ["vllm", "serve", "/models/a b", "--api-key", API_KEY, "--x", f"it's {TOKEN}"]
    env = {"PATH": "/opt/bin:/usr/bin", "HF_TOKEN": TOKEN, "NOTE": "two words"}
    line = proc.describe(argv, env)
    assert TOKEN not in line and API_KEY not in line
    words = shlex.split(line)
    # The environment first, sorted, then the argv, each word as the shell will see it.
    assert words == ["HF_TOKEN=***", "NOTE=two words", "PATH=/opt/bin:/usr/bin", "vllm", "serve",
                     "/models/a b", "--api-key", "***", "--x", "it's ***"]
    assert proc.describe(["ls", "-l"]) == "ls -l"


# --------------------------------------------------------------------------- stream
def test_stream_sends_each_line_to_log_then_on_line_and_keeps_a_tail() -> None:
    log: list[str] = []
    seen: list[str] = []
    code = "import sys\nfor i in range(50): print(f'line {i}', flush=True)\n" \
           "print('to stderr', file=sys.stderr, flush=True)\nsys.exit(4)"
    res = proc.stream(py(code), log=log.append, on_line=seen.append, env={"HF_TOKEN": TOKEN},
                      keep=5)
    assert log[0].startswith("$ HF_TOKEN='***' ") and TOKEN not in log[0]
    assert log[1:] == [f"line {i}" for i in range(50)] + ["to stderr"]
    assert seen == log[1:]
    assert res.rc == 4 and not res.ok
    assert res.tail == ("line 46", "line 47", "line 48", "line 49", "to stderr")
    assert res.why() == "to stderr"


def test_stream_success_and_cwd(tmp_path: Path) -> None:
    log: list[str] = []
    res = proc.stream(py("import os; print(os.getcwd())"), log=log.append, cwd=tmp_path)
    assert res.ok and res.why() == ""
    assert Path(res.tail[-1]).resolve() == tmp_path.resolve()
    assert log[0].endswith(f"  (in {tmp_path})")


def test_stream_ticks_while_the_child_is_quiet() -> None:
    ticks: list[float] = []
    code = "import time; print('a', flush=True); time.sleep(1.5); print('b', flush=True)"
    res = proc.stream(py(code), log=lambda _: None, on_tick=lambda: ticks.append(1), tick=0.2)
    assert res.ok
    assert len(ticks) >= 3  # 1.5 s of silence at one tick per 0.2 s


def test_stream_missing_program_raises_what_why_fix(tmp_path: Path) -> None:
    with pytest.raises(TurboError) as err:
        proc.stream([str(tmp_path / "nope")], log=lambda _: None, what="build step 'x'",
                    fix="Check the toolchain.")
    assert err.value.what == "build step 'x'"
    assert "is not installed" in err.value.why
    assert err.value.fix == "Check the toolchain."


def _handler_child(marker: Path, sleep: float) -> list[str]:
    # Prints its pid, writes ``marker`` on SIGTERM and exits; otherwise sleeps then exits 0.
    code = (
        "import os, signal, sys, time\n"
        f"def bye(*_):\n    open({str(marker)!r}, 'w').write('term'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print(os.getpid(), flush=True)\n"
        f"time.sleep({sleep})\n"
        f"open({str(marker)!r}, 'w').write('finished')\n"
    )
    return py(code)


def test_stream_callback_error_terminates_the_child(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    def fail(line: str) -> None:
        raise TurboError("watching", "stalled", "Retry.")

    t0 = time.monotonic()
    with pytest.raises(TurboError, match="stalled"):
        proc.stream(_handler_child(marker, 30), log=lambda _: None, on_line=fail, grace=20)
    assert time.monotonic() - t0 < 15  # stopped at once, not after its sleep
    assert marker.read_text() == "term"


def test_ctrl_c_gives_the_child_its_grace_period(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        proc.stream(_handler_child(marker, 0.5), log=lambda _: None, on_line=interrupt, grace=20)
    # Ctrl-C reaches the child from the terminal; the runner waits for it, it sends no SIGTERM.
    assert marker.read_text() == "finished"


def test_ctrl_c_kills_a_child_that_outlives_the_grace(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pids: list[int] = []

    def interrupt(line: str) -> None:
        pids.append(int(line))
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        proc.stream(_handler_child(marker, 30), log=lambda _: None, on_line=interrupt, grace=0.5)
    assert time.monotonic() - t0 < 15
    assert not alive(pids[0])
    assert not marker.exists()  # killed: neither finished nor asked to terminate


# --------------------------------------------------------------------------- start
def test_start_returns_a_running_child_and_refuses_clearly(tmp_path: Path) -> None:
    child = proc.start(py("import sys; sys.exit(7)"))
    assert child.wait(timeout=30) == 7
    with pytest.raises(TurboError) as err:
        proc.start([str(tmp_path / "nope")], what="starting the server", fix="Install it.")
    assert err.value.line().startswith("starting the server: ")
    assert err.value.line().endswith("is not installed (not found). Install it.")


# --------------------------------------------------------------------------- Host.run
def test_host_run_goes_through_capture(tmp_path: Path) -> None:
    host = Host()
    assert host.run(py("import sys; print('o'); print('e', file=sys.stderr); sys.exit(1)")) == (
        1,
        "o\ne",
    )
    rc, text = host.run([str(tmp_path / "nope")])
    assert rc == 127 and "No such file" in text
    rc, text = host.run(py("import time; time.sleep(10)"), timeout=0.5)
    assert rc == 127 and "timed out" in text
