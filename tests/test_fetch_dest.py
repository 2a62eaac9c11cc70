"""fetch-model replaces or deletes only what it recorded: a destination holding someone else's
files is refused in one line naming them (``--dry-run`` says so too) unless ``--adopt-existing``
is given, and even then files the checkpoint does not name are never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import test_fetch_model
from tests.hubserver import Fault, HubFile, HubServer
from tests.test_fetch_model import (
    MIB,
    REPO_ID,
    SHARD1,
    SHARD2,
    WANTED,
    cli_env,
    invoke,
    repo_files,
    request,
)
from turbo import model_fetch
from turbo.errors import TurboError
from turbo.manifest import MANIFEST_NAME, check_local, read_manifest

hub = test_fetch_model.hub  # the same stand-in hub fixture, serving the pinned repo


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def foreign_files(dest: Path) -> dict[str, bytes]:
    """Files a user (or another tool) left in the destination."""
    files = {
        "config.json": b'{"model_type": "my-own-model", "note": "hand edited"}\n',
        "notes.txt": b"my notes\n",
        f"{model_fetch.STAGING}/mine.txt": b"not a part file\n",
        f"{model_fetch.STAGING}/{'e' * 64}.part": b"someone else's partial download",
        ".cache/huggingface/download/abc.Xy12.incomplete": b"\0" * 1000,
    }
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return files


def cdn_gets(server: HubServer) -> list[dict[str, object]]:
    return [r for r in server.state.requests if r["role"] == "cdn" and r["method"] == "GET"]


def test_foreign_destination_is_refused_and_untouched(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    foreign_files(dest)
    before = snapshot(dest)

    dry = model_fetch.fetch_model(request(dest, dry_run=True))
    refusal = [p for p in dry.problems if p.startswith("would refuse")]
    assert refusal, dry.problems
    for name in ("config.json", "notes.txt", model_fetch.STAGING, ".cache"):
        assert name in refusal[0]
    assert "--adopt-existing" in refusal[0]
    assert "would refuse" in model_fetch.render(dry)

    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest))
    line = exc.value.line()
    assert "config.json" in line and "notes.txt" in line and "--adopt-existing" in line
    assert "\n" not in line
    assert snapshot(dest) == before, "a refused run changed the destination"
    assert cdn_gets(hub) == []


def test_adopt_existing_replaces_only_checkpoint_files(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    foreign = foreign_files(dest)
    result = model_fetch.fetch_model(request(dest, adopt_existing=True))
    assert check_local(dest) == []
    # The checkpoint's config.json replaced the user's (they asked for it) ...
    assert (dest / "config.json").read_bytes() == repo_files(hub)["config.json"].data
    assert result.repaired == ["config.json"]
    # ... and nothing the checkpoint does not name was deleted or changed.
    for rel, data in foreign.items():
        if rel != "config.json":
            assert (dest / rel).read_bytes() == data, rel
    assert any("left alone" in n and "notes.txt" in n for n in result.notes), result.notes


def test_same_size_foreign_file_is_hashed_and_refused(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    files = repo_files(hub)
    (dest / "config.json").write_bytes(files["config.json"].data)  # identical: adopted
    mine = b"\0" * len(files[SHARD2].data)  # same size, other bytes: not ours to replace
    (dest / SHARD2).write_bytes(mine)
    dry = model_fetch.fetch_model(request(dest, dry_run=True))
    assert any("hash" in n and SHARD2 in n for n in dry.notes), dry.notes
    with pytest.raises(TurboError, match=rf"{SHARD2}.*--adopt-existing"):
        model_fetch.fetch_model(request(dest))
    assert (dest / SHARD2).read_bytes() == mine
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", SHARD2]
    assert cdn_gets(hub) == []


def test_identical_files_are_adopted_without_the_flag(hub: HubServer, tmp_path: Path) -> None:
    """A copy from the other Spark, without its manifest: hashed, kept, nothing fetched."""
    dest = tmp_path / "model"
    dest.mkdir()
    for path, f in repo_files(hub).items():
        if path in WANTED:
            (dest / path).write_bytes(f.data)
    result = model_fetch.fetch_model(request(dest))
    assert result.downloaded_bytes == 0 and result.repaired == []
    assert check_local(dest) == []


def test_own_directory_keeps_foreign_files(hub: HubServer, tmp_path: Path) -> None:
    """A model dir fetch-model made: a re-run that downloads again leaves others' files alone,
    but removes its own leftovers (a part of a file the hub no longer serves)."""
    dest = tmp_path / "model"
    hub.state.faults[SHARD1] = Fault(MIB + MIB // 2)
    with pytest.raises(TurboError, match="interrupted"):
        model_fetch.fetch_model(request(dest))
    ours = list((dest / model_fetch.STAGING).glob("*.part"))
    assert len(ours) == 1
    hub.state.faults.clear()
    # The hub moves on: SHARD1 changes, so the part fetched before is a stale leftover of ours.
    repo = hub.state.repos[REPO_ID]
    repo.files[SHARD1] = HubFile(SHARD1, repo.files[SHARD1].data[::-1])
    (dest / "notes.txt").write_text("mine\n")
    (dest / model_fetch.STAGING / "mine.txt").write_text("mine too\n")
    incomplete = dest / ".cache" / "huggingface" / "download" / "abc.incomplete"
    incomplete.parent.mkdir(parents=True)
    incomplete.write_bytes(b"\0" * 100)
    result = model_fetch.fetch_model(request(dest, revision=repo.commit))
    assert check_local(dest) == []
    assert not ours[0].exists() and result.cleaned == [f"{model_fetch.STAGING}/{ours[0].name}"]
    assert (dest / "notes.txt").read_text() == "mine\n"
    assert (dest / model_fetch.STAGING / "mine.txt").read_text() == "mine too\n"
    assert incomplete.stat().st_size == 100
    assert sorted(p.name for p in (dest / model_fetch.STAGING).iterdir()) == ["mine.txt"]


def test_symlinked_staging_is_refused(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.part").write_bytes(b"x")
    (dest / model_fetch.STAGING).symlink_to(elsewhere)
    for adopt in (False, True):
        with pytest.raises(TurboError, match="symlink"):
            model_fetch.fetch_model(request(dest, adopt_existing=adopt))
    assert [p.name for p in elsewhere.iterdir()] == ["keep.part"]


def test_cli_dry_run_reports_the_refusal(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    foreign_files(dest)
    before = snapshot(dest)
    env = cli_env(hub, tmp_path)
    dry = invoke("--dest", str(dest), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would refuse" in dry.stdout and "notes.txt" in dry.stdout
    dry_json = invoke("--dest", str(dest), "--dry-run", "--json", env=env)
    assert any("would refuse" in p for p in json.loads(dry_json.stdout)["problems"])
    real = invoke("--dest", str(dest), env=env)
    assert real.returncode == 1 and real.stderr.count("\n") == 1, real.stderr
    assert "--adopt-existing" in real.stderr and "Traceback" not in real.stderr
    assert snapshot(dest) == before
    adopt = invoke("--dest", str(dest), "--adopt-existing", env=env)
    assert adopt.returncode == 0, adopt.stderr
    assert (dest / "notes.txt").read_bytes() == before["notes.txt"]
    assert read_manifest(dest) is not None and (dest / MANIFEST_NAME).is_file()


def test_dry_run_without_the_hub_still_reports_the_refusal(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    foreign_files(dest)
    proc = invoke("--dest", str(dest), "--dry-run", env=cli_env(None, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "hub not consulted" in proc.stdout
    assert "would refuse" in proc.stdout and "notes.txt" in proc.stdout


def test_hostile_listing_cannot_name_a_part_outside_staging(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing's sha256 names the part file: '../../x' must never become a path."""
    real = HubFile.tree_entry

    def crafted(self: HubFile) -> dict[str, object]:
        entry = real(self)
        if self.path == SHARD1:
            entry["lfs"] = {**entry["lfs"], "oid": "../../../escaped"}
        return entry

    monkeypatch.setattr(HubFile, "tree_entry", crafted)
    dest = tmp_path / "deep" / "er" / "model"
    with pytest.raises(TurboError, match="malformed sha256"):
        model_fetch.fetch_model(request(dest))
    assert not (tmp_path / "deep").exists()
    assert not list(tmp_path.rglob("escaped*"))
