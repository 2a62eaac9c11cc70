"""Paths read from files stay inside their root: crafted patch records and model manifests
(``../``, absolute paths, symlinks) are refused in one line and nothing outside is touched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from turbo import contain, model_fetch, patching
from turbo.errors import TurboError
from turbo.manifest import (
    Manifest,
    ManifestFile,
    check_local,
    hash_problems,
    read_manifest,
    sha256_file,
    write_manifest,
)
from turbo.pins import load_pins


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the helper
def test_inside_accepts_plain_paths_and_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    (root / "a" / "in").symlink_to(root / "a")
    ok = contain.inside(root, "a/b.txt", source="rec", fix="fix")
    assert ok == (root / "a" / "b.txt").resolve()
    assert contain.inside(root, "a/in/x", source="rec", fix="fix") == root.resolve() / "a" / "x"
    for bad in ("../x", "a/../../x", "/etc/passwd", "", ".", "out/x", "out", "~/x", 3, None):
        with pytest.raises(contain.Escape) as exc:
            contain.inside(root, bad, source="the record", fix="Do this.")
        line = exc.value.line()
        assert line.startswith("the record: names ") and "nothing was touched" in line
        assert "\n" not in line


# --------------------------------------------------------------------------- patch records
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "vllm").mkdir(parents=True)
    (t / "vllm" / "a.py").write_text("patched\n")
    return t


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    v = outside / "victim.txt"
    v.write_text("precious\n")
    return v


def write_record(
    tree: Path, pristine: dict[str, str | None], patched: dict[str, str | None] | None = None
) -> Path:
    rec = {
        "status": "applied",
        "ref": "0.16.0",
        "series_digest": "x",
        "patches": ["0001-x"],
        "pristine": pristine,
        "patched": patched or {},
    }
    p = tree / patching.STATE_FILE
    p.write_text(json.dumps(rec))
    return p


def assert_untouched(tree: Path, victim: Path, record: Path) -> None:
    assert victim.read_text() == "precious\n"
    assert record.is_file(), "the record must stay: nothing was reverted"
    assert (tree / "vllm" / "a.py").read_text() == "patched\n"


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_revert_never_deletes_outside_the_tree(tree: Path, victim: Path, how: str) -> None:
    rel = "../outside/victim.txt" if how == "dotdot" else str(victim)
    record = write_record(tree, {rel: None, "vllm/a.py": None})
    with pytest.raises(TurboError, match="nothing was touched"):
        patching.revert_series(tree, force=True)
    assert_untouched(tree, victim, record)
    with pytest.raises(TurboError, match="nothing was touched"):
        patching.revert_plan(tree)


def test_revert_never_overwrites_outside_the_tree(tree: Path, victim: Path) -> None:
    # The "pristine copy" of ../outside/victim.txt sits where revert would look for it.
    evil = b"overwritten\n"
    saved = tree / patching.STATE_DIR / "pristine" / ".." / "outside" / "victim.txt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(evil)
    record = write_record(tree, {"../outside/victim.txt": sha(evil)})
    with pytest.raises(TurboError, match="nothing was touched"):
        patching.revert_series(tree, force=True)
    assert_untouched(tree, victim, record)


def test_revert_never_follows_a_symlink_out(tree: Path, victim: Path) -> None:
    (tree / "vllm" / "link").symlink_to(victim.parent)
    record = write_record(tree, {"vllm/link/victim.txt": None})
    with pytest.raises(TurboError, match="through a symlink"):
        patching.revert_series(tree, force=True)
    assert_untouched(tree, victim, record)


def test_revert_never_reads_pristine_copies_through_a_symlinked_state_dir(
    tree: Path, victim: Path, tmp_path: Path
) -> None:
    # .turbo-patches -> a folder outside holding "pristine" bytes for a file of the tree.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "pristine" / "vllm").mkdir(parents=True)
    (elsewhere / "pristine" / "vllm" / "a.py").write_text("from outside\n")
    (tree / patching.STATE_DIR).symlink_to(elsewhere)
    record = write_record(tree, {"vllm/a.py": sha(b"from outside\n")})
    with pytest.raises(TurboError, match="symlink"):
        patching.revert_series(tree, force=True)
    assert_untouched(tree, victim, record)
    assert (elsewhere / "pristine" / "vllm" / "a.py").is_file()


def test_apply_refuses_a_record_that_reads_outside(tree: Path, victim: Path) -> None:
    # "already applied" compares the recorded hashes of patched files: never of outside files.
    ref = load_pins().vllm.sdist_version
    names = [
        p.name
        for p in patching.select(
            patching.load_series(), ref, patching.PatchReport("", ref, "apply")
        )
    ]
    rec = {
        "status": "applied",
        "ref": ref,
        "series_digest": patching.series_digest(),
        "patches": names,
        "pristine": {},
        "patched": {"../outside/victim.txt": sha(b"precious\n")},
    }
    record = tree / patching.STATE_FILE
    record.write_text(json.dumps(rec))
    with pytest.raises(TurboError, match="nothing was touched"):
        patching.apply_series(tree, ref)
    assert_untouched(tree, victim, record)


def test_malformed_record_is_one_line(tree: Path) -> None:
    write_record(tree, {"vllm/a.py": 5})  # type: ignore[dict-item]
    with pytest.raises(TurboError, match="malformed"):
        patching.revert_series(tree, force=True)
    (tree / patching.STATE_FILE).write_text("[1, 2]")
    with pytest.raises(TurboError, match="malformed"):
        patching.revert_series(tree, force=True)


def test_cli_revert_with_a_crafted_record_is_one_line(tree: Path, victim: Path) -> None:
    record = write_record(tree, {"../outside/victim.txt": None})
    for extra in ([], ["--dry-run"]):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "patches.revert",
                "--src",
                str(tree),
                "--force",
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "../outside/victim.txt" in proc.stderr
        assert_untouched(tree, victim, record)


def test_legit_revert_still_restores_and_prunes(tree: Path, victim: Path) -> None:
    """The containment check does not get in the way of a real record."""
    pristine = tree / patching.STATE_DIR / "pristine" / "vllm" / "a.py"
    pristine.parent.mkdir(parents=True)
    pristine.write_text("original\n")
    (tree / "vllm" / "new").mkdir()
    (tree / "vllm" / "new" / "b.py").write_text("created by the series\n")
    write_record(tree, {"vllm/a.py": sha(b"original\n"), "vllm/new/b.py": None})
    report = patching.revert_series(tree, force=True)
    assert report.reverted == ["0001-x"]
    assert (tree / "vllm" / "a.py").read_text() == "original\n"
    assert not (tree / "vllm" / "new").exists()
    assert sorted(p.name for p in tree.iterdir()) == ["vllm"]
    assert victim.read_text() == "precious\n"


# --------------------------------------------------------------------------- model manifests
def manifest_with(model: Path, path: str, target: Path) -> None:
    entry = ManifestFile(path, target.stat().st_size, sha256_file(target))
    write_manifest(
        model,
        Manifest(
            repo=load_pins().model.repo,
            revision="0" * 40,
            files=(entry,),
            fetched_at="2025-01-01T00:00:00Z",
        ),
    )


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_manifest_entries_never_leave_the_model_dir(tmp_path: Path, victim: Path, how: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    if how == "symlink":
        (model / "model.safetensors").symlink_to(victim)
        rel = "model.safetensors"
    else:
        rel = "../outside/victim.txt" if how == "dotdot" else str(victim)
    manifest_with(model, rel, victim)
    hashed: list[int] = []
    with pytest.raises(TurboError, match=r"turbo-manifest\.json.*nothing was touched"):
        m = read_manifest(model)
        assert m is not None
        check_local(model, m)
        hash_problems(model, m, hashed.append)
    assert hashed == [], "the outside file was hashed"
    req = model_fetch.build_request(load_pins(), dest=str(model), offline=True, verify=True)
    with pytest.raises(TurboError, match="nothing was touched"):
        model_fetch.fetch_model(req)
    assert victim.read_text() == "precious\n"


def test_cli_offline_check_of_an_escaping_manifest_is_one_line(
    tmp_path: Path, victim: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    manifest_with(model, "../outside/victim.txt", victim)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "fetch-model", "--dest", str(model), "--verify"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "../outside/victim.txt" in proc.stderr


# --------------------------------------------------------------------------- pid files
def test_stop_never_signals_a_process_serve_did_not_start(tmp_path: Path) -> None:
    """A pid file naming a live process group that is not a server's own session (crafted,
    or a recycled pid with a matching start time) is refused: the process keeps running."""
    from turbo import paths, serve, serve_records

    victim = subprocess.Popen(["sleep", "60"], process_group=0)  # a group leader, not ours
    try:
        start = serve_records.start_time(victim.pid)
        pidf = paths.run_dir() / "serve-8999.json"
        pidf.parent.mkdir(parents=True)
        pidf.write_text(json.dumps({"kind": "serve", "pid": victim.pid, "start_time": start,
                                    "port": 8999, "profile": "vanilla"}))
        with pytest.raises(TurboError, match="pid file"):
            serve.stop(port=8999, out=lambda _line: None)
        assert victim.poll() is None, "stop signalled a process serve did not start"
        assert pidf.is_file()
    finally:
        victim.kill()
        victim.wait()
