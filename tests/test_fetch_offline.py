"""No dead ends and no needless network: a complete, manifest-checked model is confirmed from
the disk alone (sizes, no hub request, no hashing), and a damaged manifest is rebuilt by
hashing the files against the hub instead of sending the user in a circle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import test_fetch_model
from tests.hubserver import HubServer
from tests.test_fetch_model import SHARD1, cli_env, invoke, repo_files, request
from turbo import doctor, manifest, model_fetch, serve
from turbo.errors import TurboError
from turbo.manifest import MANIFEST_NAME, check_local, read_manifest

hub = test_fetch_model.hub  # the stand-in hub fixture, serving the pinned repo


def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> str:
        raise AssertionError("a complete model was hashed: sizes must do")

    monkeypatch.setattr(manifest, "sha256_file", refuse)
    monkeypatch.setattr(model_fetch, "sha256_file", refuse)
    monkeypatch.setattr(model_fetch, "git_blob_oid", refuse)


def test_complete_model_needs_no_hub(hub: HubServer, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    hub.state.reset_counts()
    with monkeypatch.context() as mp:
        no_hashing(mp)
        for dry in (False, True):
            result = model_fetch.fetch_model(request(dest, dry_run=dry))
            assert result.problems == [] and result.download_bytes == 0
            assert any("hub not asked" in n for n in result.notes), result.notes
    assert hub.state.requests == [], "a complete model made the hub be asked"
    # Something missing: only then is the hub asked (and the file fetched).
    (dest / SHARD1).unlink()
    model_fetch.fetch_model(request(dest))
    assert hub.state.requests and check_local(dest) == []
    # --verify hashes, against the hub.
    hub.state.reset_counts()
    model_fetch.fetch_model(request(dest, verify=True))
    assert hub.state.requests


def test_cli_with_the_hub_unreachable(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    assert invoke("--dest", str(dest), env=cli_env(hub, tmp_path)).returncode == 0
    offline = cli_env(None, tmp_path)  # HF_ENDPOINT on port 9: nothing listens there
    proc = invoke("--dest", str(dest), env=offline)
    assert proc.returncode == 0, proc.stderr
    assert "hub not asked" in proc.stdout
    # Incomplete and unreachable: one line, what to do.
    (dest / SHARD1).unlink()
    proc = invoke("--dest", str(dest), env=offline)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot reach http://127.0.0.1:9" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "not-an-object", "bad-field", "escaping"])
def test_damaged_manifest_is_rebuilt(hub: HubServer, tmp_path: Path, damage: str) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    path = dest / MANIFEST_NAME
    good = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    elif damage == "not-an-object":
        path.write_text("[]")
    elif damage == "bad-field":
        path.write_text(json.dumps({**good, "files": [{"path": "x"}]}))
    else:
        path.write_text(json.dumps({**good, "files": [{**good["files"][0],
                                                       "path": "../elsewhere"}]}))
    # Every reader names the file and the way out ...
    with pytest.raises(TurboError) as exc:
        read_manifest(dest)
    line = exc.value.line()
    assert str(path) in line and f"fetch-model --dest {dest}" in line
    assert str(path) in serve.model_problems(dest)[0]
    row = doctor.check_model(dest)
    assert row.status == doctor.FAIL and str(path) in row.detail and "--dest" in row.fix
    offline = request(dest, offline=True)
    with pytest.raises(TurboError, match="network"):
        model_fetch.fetch_model(offline)
    # ... and that way out works: files hashed against the hub, nothing downloaded again.
    hub.state.reset_counts()
    result = model_fetch.fetch_model(request(dest))
    assert result.downloaded_bytes == 0 and result.repaired == []
    assert sum(hub.state.bytes_sent.values()) == 0
    rebuilt = read_manifest(dest)
    assert rebuilt is not None and check_local(dest) == []
    assert {f.path: f.sha256 for f in rebuilt.files} == {
        p: f.sha256 for p, f in repo_files(hub).items() if p in {x["path"] for x in good["files"]}}
