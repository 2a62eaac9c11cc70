"""sd_notify: the protocol on a real unix datagram socket (path and abstract), and foreground
`serve` under $NOTIFY_SOCKET against the stand-in server: STATUS while loading, READY=1 only once
/health answered and the warm-up request was served, STOPPING=1 on SIGTERM, no READY when the
server never becomes healthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.notify_listener import Message, NotifyListener, notify_env
from tests.serve_fixtures import REPO, complete_model, fake_bin, path_with, usable_stamp
from tests.test_serve import free_port
from turbo import notify


# ------------------------------------------------------------------------------ the protocol
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_messages_reach_the_socket(tmp_path: Path, abstract: bool) -> None:
    with NotifyListener.at(tmp_path, abstract=abstract) as nl:
        n = notify.Notifier.from_env({"NOTIFY_SOCKET": nl.address})
        assert n.active
        assert n.status("loading\nweights 3/9")
        assert n.ready("serving qwen3-next")
        assert n.stopping()
        assert nl.wait_for("STOPPING", timeout=5) is not None
    raws = [m.raw for m in nl.messages]
    # A newline in STATUS would start a new assignment: it is folded to one line.
    assert raws == ["STATUS=loading weights 3/9", "READY=1\nSTATUS=serving qwen3-next",
                    "STOPPING=1\nSTATUS=stopping"]


def test_without_notify_socket_nothing_is_sent() -> None:
    n = notify.Notifier.from_env({})
    assert not n.active and not n.ready("x") and not n.status("x")


def test_unusable_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert notify.socket_address("vsock:2:1234") is None
    assert notify.socket_address("@") is None
    assert notify.socket_address("@abc") == b"\0abc"
    assert not notify.Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).active
    # Nobody listening: serving goes on, one complaint on stderr, not one per message.
    gone = notify.Notifier(str(tmp_path / "nobody.sock"))
    assert not gone.status("a") and not gone.status("b")
    assert capsys.readouterr().err.count("cannot reach NOTIFY_SOCKET") == 1


def test_progress_is_throttled_and_ends_at_ready(tmp_path: Path) -> None:
    with NotifyListener.at(tmp_path) as nl:
        progress = notify.Progress(notify.Notifier(nl.address), interval=60)
        progress.offer("Loading safetensors checkpoint shards: 0% Completed\n")
        progress.offer("Loading safetensors checkpoint shards: 50% Completed\n")  # too soon
        progress.ready("serving")
        progress.offer("after ready")
        assert nl.wait_for("READY", timeout=5) is not None
    assert [m.raw for m in nl.messages] == [
        "STATUS=vllm: Loading safetensors checkpoint shards: 0% Completed",
        "READY=1\nSTATUS=serving"]


def test_children_never_get_the_socket() -> None:
    env = notify.child_env({"NOTIFY_SOCKET": "/run/x", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


# ------------------------------------------------------------------------------ serve under it
def health_and_requests(port: int) -> dict[str, object]:
    """Asked the moment a message arrives: is /health 200, how many requests were served."""
    base = f"http://127.0.0.1:{port}"
    try:
        health = requests.get(base + "/health", timeout=2).status_code
        metrics = requests.get(base + "/metrics", timeout=2).text
    except requests.RequestException:
        return {"health": None, "requests": 0}
    served = 0.0
    for line in metrics.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_count"):
            served = float(line.rsplit(" ", 1)[1])
    return {"health": health, "requests": served}


def start_serve(tmp_path: Path, port: int, nl: NotifyListener, *extra: str,
                startup_s: float = 2.0, mode: str = "normal") -> subprocess.Popen[str]:
    usable_stamp()
    model = complete_model(tmp_path / "m")
    fake_bin(tmp_path / "bin")
    env = notify_env({**os.environ, "PATH": path_with(tmp_path / "bin"),
                      "PYTHONUNBUFFERED": "1", "STANDIN_STARTUP_S": str(startup_s),
                      "STANDIN_MODE": mode}, nl)
    return subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--profile", "vanilla",
                             "--model", str(model), "--port", str(port), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_ready_only_after_health_and_warm_up(tmp_path: Path) -> None:
    port = free_port()

    def at_arrival(_m: Message) -> dict[str, object]:
        return health_and_requests(port)

    with NotifyListener.at(tmp_path, on_message=at_arrival) as nl:
        proc = start_serve(tmp_path, port, nl)
        try:
            ready = nl.wait_for("READY", timeout=90)
            assert ready is not None, proc.stdout.read() if proc.poll() is not None else "no READY"
            # The stand-in answers /health only after 2 s: READY sent early would see 503 here.
            assert ready.seen == {"health": 200, "requests": 1.0}
            assert ready.fields["STATUS"] == f"serving qwen3-next at http://127.0.0.1:{port}/v1"
            before = [m for m in nl.messages if m.at < ready.at]
            assert before[0].fields["STATUS"].startswith("started vllm (pid ")
            assert before[0].seen["health"] != 200  # still loading when serve said so
            assert any(s.startswith("healthy after") for s in nl.statuses())
            assert any(s.startswith("warm-up:") for s in nl.statuses())
            # vLLM's own output while it loads (the stand-in's first line, its argument log,
            # shortened to its end), never after READY.
            assert any(m.fields.get("STATUS", "").startswith("vllm: ") for m in before)
            assert all(not m.fields.get("STATUS", "").startswith("vllm: ")
                       for m in nl.messages if m.at > ready.at)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        stopping = nl.wait_for("STOPPING", timeout=5)
    assert proc.returncode == 0, out
    assert stopping is not None and stopping.at > ready.at
    assert "stand-in stopped" in out


def test_never_healthy_never_ready(tmp_path: Path) -> None:
    port = free_port()
    with NotifyListener.at(tmp_path, abstract=True) as nl:
        proc = start_serve(tmp_path, port, nl, "--health-timeout", "3", mode="never-healthy")
        out, _ = proc.communicate(timeout=60)
        time.sleep(0.2)
    assert proc.returncode == 1, out
    assert "not healthy after 3 s" in out
    assert all("READY" not in m.fields for m in nl.messages)
    assert nl.statuses() and nl.statuses()[0].startswith("started vllm")
