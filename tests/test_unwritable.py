"""Locations a normal user cannot write (no /data, a read-only TURBO_HOME, a logs directory
owned by someone else): doctor and --dry-run already say so, and a real run stops in one line
before any work.

Run for real: as a normal user against directories made read-only (chmod); as root, which
may write anywhere, against a read-only bind mount (the read-only TURBO_HOME or model disk of
the issue). Where neither can be made, the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

AS_ROOT = os.geteuid() == 0


def make_unwritable(path: Path) -> None:
    if not AS_ROOT:
        os.chmod(path, 0o555)
        return
    for argv in (["mount", "--bind", str(path), str(path)],
                 ["mount", "-o", "remount,ro,bind", str(path)]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if argv[1] != "--bind":
                subprocess.run(["umount", str(path)], check=False)
            pytest.skip(f"root here cannot make a read-only bind mount: {proc.stderr.strip()}")


def undo(path: Path) -> None:
    if AS_ROOT:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)
    else:
        os.chmod(path, 0o755)


@pytest.fixture
def places() -> Iterator[dict[str, Path]]:
    """``ro``: a directory this user cannot write; ``rw``: one it can."""
    top = Path(tempfile.mkdtemp(prefix="turbo-unwritable-"))
    ro, rw = top / "ro", top / "rw"
    ro.mkdir()
    rw.mkdir()
    make_unwritable(ro)
    try:
        yield {"ro": ro, "rw": rw}
    finally:
        undo(ro)
        shutil.rmtree(top, ignore_errors=True)


def run(places: dict[str, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    drop = ("MODEL", "PORT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    # No hub here: a dry run plans from the pins (port 9 answers nothing, at once).
    base.update(TURBO_HOME=str(places["rw"] / "turbo"), HF_ENDPOINT="http://127.0.0.1:9")
    base.update(env)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=base,
                          text=True, capture_output=True, timeout=180)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_doctor_names_each_unwritable_location(places: dict[str, Path]) -> None:
    proc = run(places, "doctor", "--json", TURBO_HOME=str(places["ro"] / "turbo"),
               MODEL=str(places["ro"] / "data" / "model"))
    assert "Traceback" not in proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    for name in ("state dir", "log dir", "model dir"):
        assert rows[name]["status"] == "fail", rows[name]
        assert "not writable" in rows[name]["detail"] and rows[name]["fix"]
    assert "MODEL" in rows["model dir"]["fix"] and "TURBO_HOME" in rows["state dir"]["fix"]
    assert proc.returncode == 1


def test_doctor_passes_writable_locations(places: dict[str, Path]) -> None:
    proc = run(places, "doctor", "--json", MODEL=str(places["rw"] / "model"))
    rows = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert {rows[n]["status"] for n in ("state dir", "log dir", "model dir")} == {"pass"}


def test_fetch_model_dry_run_says_the_model_dir_cannot_be_created(
        places: dict[str, Path]) -> None:
    model = places["ro"] / "data" / "tensordata" / "model"
    dry = run(places, "fetch-model", "--dry-run", MODEL=str(model))
    assert dry.returncode == 0 and "Traceback" not in dry.stderr
    assert "would fail:" in dry.stdout and "not writable" in dry.stdout, dry.stdout
    real = run(places, "fetch-model", MODEL=str(model))
    line = one_line(real)
    assert real.returncode == 1 and "not writable" in line and "--dest" in line
    assert not model.parent.exists()


def test_explicit_unwritable_dest_is_refused_at_parse(places: dict[str, Path]) -> None:
    proc = run(places, "fetch-model", "--dest", str(places["ro"] / "m"), "--dry-run")
    assert proc.returncode == 2 and "--dest" in one_line(proc)


def test_build_dry_run_with_read_only_turbo_home(places: dict[str, Path]) -> None:
    proc = run(places, "build-vllm", "--dry-run", TURBO_HOME=str(places["ro"] / "turbo"))
    line = one_line(proc)
    assert proc.returncode == 1 and "TURBO_HOME" in line and "not writable" in line


def test_serve_dry_run_shows_the_state_dir_check(places: dict[str, Path]) -> None:
    proc = run(places, "serve", "--dry-run", "--json", TURBO_HOME=str(places["ro"] / "turbo"))
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["state dir"]["status"] == "fail"


def test_logs_owned_by_another_user(places: dict[str, Path]) -> None:
    logs = places["rw"] / "turbo" / "logs"
    logs.mkdir(parents=True)
    make_unwritable(logs)
    try:
        proc = run(places, "fetch-model", "--dry-run", MODEL=str(places["rw"] / "model"))
        line = one_line(proc)
        assert proc.returncode == 1 and "log file" in line and "TURBO_HOME" in line
    finally:
        undo(logs)
