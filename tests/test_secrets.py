"""Secrets never reach the screen or a file: the product's commands run (dry and real, against
the stand-in hub and the stand-in vLLM) with a Hugging Face token, credentials inside
HF_ENDPOINT and an API key after ``--``; then every file they wrote and everything they
printed is searched for those values. Logs are private (0600 files in a 0700 folder)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hubserver import HubFile, HubRepo, HubServer
from tests.serve_fixtures import complete_model, fake_bin, path_with, usable_stamp
from tests.test_fetch_model import REPO_ID, make_files
from turbo import paths
from turbo.console import redact, redact_argv

REPO = Path(__file__).resolve().parents[1]
HF_TOKEN = "hf_" + "Sx9" * 12
URL_PASSWORD = "mirror-pass-4711"
API_KEY = "turbo-key-5b1c2d7e"  # not token-shaped: only knowing it is a key can hide it
OTHER_TOKEN = "sk-" + "Q2" * 12
SECRETS = (HF_TOKEN, URL_PASSWORD, API_KEY, OTHER_TOKEN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        server.state.add(HubRepo(REPO_ID, {p: HubFile(p, d) for p, d in make_files().items()}))
        yield server


def test_redaction_rules() -> None:
    assert redact("GET http://user:pw-1@mirror:8080/api") == "GET http://user:***@mirror:8080/api"
    assert redact("https://hf_tok123@host/x") == "https://***@host/x"
    argv = ["vllm", "serve", "m", "--api-key", "k1", "--hf-token=abc", "--my-secret", "v",
            "--password", "p", "--max-num-seqs", "4", "--x", OTHER_TOKEN]
    assert redact_argv(argv) == ["vllm", "serve", "m", "--api-key", "***", "--hf-token=***",
                                 "--my-secret", "***", "--password", "***", "--max-num-seqs", "4",
                                 "--x", "***"]


def test_no_secret_in_any_output_or_written_file(hub: HubServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["TURBO_HOME"])
    bin_dir = fake_bin(tmp_path / "bin")
    model = complete_model(tmp_path / "served-model")
    usable_stamp()
    dest = tmp_path / "fetched-model"
    host_port = hub.url.split("://", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "VLLM_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=HF_TOKEN,
               HF_ENDPOINT=f"http://mirror-user:{URL_PASSWORD}@{host_port}",
               PATH=path_with(bin_dir), PYTHONUNBUFFERED="1")
    before = files_under(tmp_path)
    outputs: list[str] = []

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        outputs.append(proc.stdout + proc.stderr)  # what the product printed, nothing else
        if ok:
            assert proc.returncode == 0, f"{args[:2]}: {outputs[-1]}"
        return proc

    run("fetch-model", "--dest", str(dest), "--dry-run")
    run("fetch-model", "--dest", str(dest), "--dry-run", "--json")
    run("fetch-model", "--dest", str(dest))
    run("fetch-model", "--dest", str(dest), "--offline", "--verify")
    run("fetch-model", "--dest", str(tmp_path / "other"), "--revision", "nope", ok=False)
    port = free_port()
    extra = ["--", "--api-key", API_KEY, "--disable-log-requests", "--x-token", OTHER_TOKEN]
    run("serve", "--model", str(model), "--port", str(port), "--dry-run", *extra)
    run("serve", "--model", str(model), "--port", str(port), "--dry-run", "--json", *extra)
    try:
        run("serve", "--model", str(model), "--port", str(port), "--detach",
            "--health-timeout", "60", *extra)
        refused = run("verify", "--port", str(port), ok=False)
        assert refused.returncode != 0 and "wants an API key" in refused.stdout, refused.stdout
        env["VLLM_API_KEY"] = API_KEY  # what a client exports to talk to the server
        run("verify", "--port", str(port))  # passes: the server was started with the key
    finally:
        run("stop", "--port", str(port), ok=False)
    env.pop("VLLM_API_KEY")
    run("doctor", ok=False)

    written = {p: data for p, data in files_under(tmp_path).items()
               if before.get(p) != data and not p.is_relative_to(tmp_path / "hf-home")}
    assert any(p.is_relative_to(home / "logs") for p in written), "no log written?"
    assert any(p.is_relative_to(dest) for p in written)
    # vLLM's own argument log reached the serve log, masked.
    serve_logs = [d.decode() for p, d in written.items() if p.name.startswith("serve-")]
    assert any("non-default args" in t and "'***'" in t for t in serve_logs), serve_logs
    for secret in SECRETS:
        for text in outputs:
            assert secret not in text, f"{secret!r} printed:\n{text}"
        for p, data in written.items():
            assert secret.encode() not in data, f"{secret!r} written to {p}"
    # ... and logs and state that may hold secrets are private.
    logs = paths.log_dir()
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    for p in logs.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
