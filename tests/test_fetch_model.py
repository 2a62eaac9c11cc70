"""fetch-model against a local hub (tests/hubserver.py) with the real huggingface_hub client.

The repo served is the pinned repo id with small real safetensors shards, an index, configs
and tokenizer files, plus files vLLM does not need (which must not be fetched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save

from tests.conftest import REPO
from tests.hubserver import Fault, HubFile, HubRepo, HubServer
from turbo import model_fetch
from turbo.errors import TurboError
from turbo.manifest import check_local, read_manifest
from turbo.pins import load_pins

PINS = load_pins()
REPO_ID = PINS.model.repo
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
WANTED = {SHARD1, SHARD2, "model.safetensors.index.json", "config.json",
          "generation_config.json", "hf_quant_config.json", "tokenizer.json",
          "tokenizer_config.json"}
MIB = 1 << 20


def make_files() -> dict[str, bytes]:
    rng = np.random.default_rng(6)
    shard1 = {"model.layers.0.w": rng.standard_normal((768, 1024), dtype=np.float32),
              "model.layers.0.scale": rng.standard_normal((64,), dtype=np.float32)}
    shard2 = {"lm_head.weight": rng.standard_normal((256, 1024), dtype=np.float32)}
    index = {"metadata": {"total_size": 0},
             "weight_map": {**dict.fromkeys(shard1, SHARD1), **dict.fromkeys(shard2, SHARD2)}}
    return {
        SHARD1: save(shard1),
        SHARD2: save(shard2),
        "model.safetensors.index.json": json.dumps(index).encode(),
        "config.json": json.dumps({"model_type": "qwen3_next", "hidden_size": 1024}).encode(),
        "generation_config.json": json.dumps({"temperature": 0.6}).encode(),
        "hf_quant_config.json": json.dumps({"quantization": {"quant_algo": "NVFP4"}}).encode(),
        "tokenizer.json": json.dumps({"model": {"vocab": {"a": 0}}}).encode(),
        "tokenizer_config.json": json.dumps({"eos_token": "a"}).encode(),
        # Not needed by a vLLM server: never fetched.
        "README.md": b"# model card\n",
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "training_args.bin": b"\0" * 4096,
        "original/consolidated.safetensors": save({"x": np.zeros(8, dtype=np.float32)}),
    }


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    import huggingface_hub.constants as hfc

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # No stored login may leak into the test from the machine's HF_HOME.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    with HubServer() as server:
        server.state.add(HubRepo(REPO_ID, {p: HubFile(p, d) for p, d in make_files().items()}))
        # huggingface_hub was imported long before this (HF_ENDPOINT frozen in its constants):
        # setting it now proves fetch-model reads it at call time.
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def request(dest: Path, **kw: Any) -> model_fetch.Request:
    req = model_fetch.build_request(PINS, dest=str(dest), progress=False, **kw)
    return replace(req, retries=1, backoff_s=0.0)


def repo_files(server: HubServer) -> dict[str, HubFile]:
    return server.state.repos[REPO_ID].files


def cdn_gets(server: HubServer, path: str) -> list[dict[str, Any]]:
    sha = repo_files(server)[path].sha256
    return [r for r in server.state.requests
            if r["role"] == "cdn" and r["method"] == "GET" and sha in r["path"]]


def test_endpoint_is_read_at_call_time(hub: HubServer) -> None:
    import huggingface_hub.constants as hfc

    assert hub.url != hfc.ENDPOINT
    assert model_fetch.hub_from_env().endpoint == hub.url


def test_fresh_download_verified(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    result = model_fetch.fetch_model(request(dest))
    files = repo_files(hub)
    manifest = read_manifest(dest)
    assert manifest is not None
    assert manifest.repo == REPO_ID
    assert manifest.revision == hub.state.repos[REPO_ID].commit
    assert {f.path for f in manifest.files} == WANTED
    for f in manifest.files:
        assert f.sha256 == files[f.path].sha256
        assert f.size == len(files[f.path].data)
        assert (dest / f.path).read_bytes() == files[f.path].data
    assert manifest.weights_bytes == len(files[SHARD1].data) + len(files[SHARD2].data)
    assert check_local(dest) == []
    assert sorted(p.name for p in dest.iterdir()) == sorted(WANTED | {"turbo-manifest.json"})
    assert load_file(str(dest / SHARD1))["model.layers.0.w"].shape == (768, 1024)
    assert result.downloaded_bytes == manifest.total_bytes
    # The manifest's JSON carries the contract keys serve and doctor read.
    raw = json.loads((dest / "turbo-manifest.json").read_text())
    assert {"repo", "revision", "files", "total_bytes", "fetched_at"} <= raw.keys()
    # Only the hub's resolve (and CDN) URLs for wanted files were fetched.
    fetched = {r["path"].split("/resolve/")[1].split("/", 1)[1] for r in hub.state.requests
               if "/resolve/" in r["path"] and r["method"] == "GET"}
    assert fetched == WANTED

    hub.state.reset_counts()
    again = model_fetch.fetch_model(request(dest))
    assert again.downloaded_bytes == 0
    assert all(f["state"] == "have" for f in again.files)
    assert sum(hub.state.bytes_sent.values()) == 0


def test_interrupted_download_resumes_in_a_new_run(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    size = len(repo_files(hub)[SHARD1].data)
    budget = MIB + MIB // 2
    hub.state.faults[SHARD1] = Fault(budget)
    with pytest.raises(TurboError, match=rf"{SHARD1}.*interrupted at byte \d+ of {size}"):
        model_fetch.fetch_model(request(dest))
    assert read_manifest(dest) is None
    parts = list((dest / model_fetch.STAGING).glob("*.part"))
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    sent_first = hub.state.bytes_sent[SHARD1]
    assert 0 < kept <= sent_first == budget < size

    hub.state.faults.clear()
    hub.state.reset_counts()
    plan = model_fetch.make_plan(request(dest), model_fetch.hub_from_env())
    states = {a.file.path: a.state for a in plan.actions}
    assert states[SHARD1] == "resume"
    assert states["config.json"] == "have"  # finished in the first run, not fetched again
    result = model_fetch.fetch_model(request(dest))
    sent_second = hub.state.bytes_sent[SHARD1]
    ranges = [g["range"] for g in cdn_gets(hub, SHARD1)]
    print(f"\nresume: {SHARD1} is {size} bytes; run 1 sent {sent_first}, kept {kept} on disk; "
          f"run 2 sent {sent_second} with Range headers {ranges}")
    assert sent_second == size - kept
    assert ranges == [f"bytes={kept}-"]
    assert result.resumed == {SHARD1: kept}
    assert hub.state.bytes_sent["config.json"] == 0
    assert (dest / SHARD1).read_bytes() == repo_files(hub)[SHARD1].data
    assert check_local(dest) == []
    assert not (dest / model_fetch.STAGING).exists()


def test_dropped_connection_is_resumed_within_the_run(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    size = len(repo_files(hub)[SHARD1].data)
    fault = Fault(MIB + MIB // 2)
    hub.state.faults[SHARD1] = fault

    def heal(line: str) -> None:
        if "interrupted" in line:
            hub.state.faults.clear()

    result = model_fetch.fetch_model(request(dest), log=heal)
    ranges = [g["range"] for g in cdn_gets(hub, SHARD1)]
    assert ranges[0] is None and ranges[1] is not None
    kept = int(ranges[1][6:-1])
    assert hub.state.bytes_sent[SHARD1] == fault.budget + size - kept
    assert result.resumed == {} and result.downloaded_bytes < result.total_bytes + fault.budget
    assert (dest / SHARD1).read_bytes() == repo_files(hub)[SHARD1].data


def test_verify_detects_corruption_and_repairs(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    good = repo_files(hub)[SHARD2].data
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (dest / SHARD2).write_bytes(bytes(bad))
    hub.state.reset_counts()

    offline = model_fetch.check_offline(replace(request(dest, verify=True), dry_run=True))
    assert offline.problems == [f"corrupt: {SHARD2} (sha256 differs from the manifest)"]

    result = model_fetch.fetch_model(request(dest, verify=True))
    assert result.repaired == [SHARD2]
    assert (dest / SHARD2).read_bytes() == good
    assert hub.state.bytes_sent[SHARD2] == len(good)
    assert hub.state.bytes_sent[SHARD1] == 0  # good files are hashed, not fetched again


def test_truncated_file_is_refetched_without_verify(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    with (dest / SHARD1).open("r+b") as fh:
        fh.truncate(1000)
    assert check_local(dest) == [f"truncated: {SHARD1} (1000 of "
                                 f"{len(repo_files(hub)[SHARD1].data)} bytes)"]
    model_fetch.fetch_model(request(dest))
    assert check_local(dest) == []
    assert (dest / SHARD1).read_bytes() == repo_files(hub)[SHARD1].data


def test_unrecorded_files_are_hashed_before_adoption(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    files = repo_files(hub)
    (dest / "config.json").write_bytes(files["config.json"].data)
    (dest / SHARD2).write_bytes(b"\0" * len(files[SHARD2].data))  # right size, wrong bytes
    # Not written by fetch-model: hashed, and replaced only when the user says so.
    with pytest.raises(TurboError, match=f"{SHARD2}.*--adopt-existing"):
        model_fetch.fetch_model(request(dest))
    assert (dest / SHARD2).read_bytes() == b"\0" * len(files[SHARD2].data)
    result = model_fetch.fetch_model(request(dest, adopt_existing=True))
    assert result.repaired == [SHARD2]
    assert hub.state.bytes_sent["config.json"] == 0
    assert (dest / SHARD2).read_bytes() == files[SHARD2].data


def needed_bytes(server: HubServer) -> int:
    return sum(len(f.data) for p, f in repo_files(server).items() if p in WANTED)


def test_not_enough_disk_fails_before_writing(hub: HubServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "disk" / "model"
    need = needed_bytes(hub) + PINS.model.disk_margin_gb * 1e9
    monkeypatch.setattr(model_fetch, "free_bytes", lambda _p: int(need) - 1)
    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest))
    line = exc.value.line()
    assert "not enough disk: need" in line and "margin" in line and str(dest) in line
    assert "--dest" in line
    assert not (tmp_path / "disk").exists()
    assert not [r for r in hub.state.requests if r["role"] == "cdn"]

    monkeypatch.setattr(model_fetch, "free_bytes", lambda _p: int(need))
    model_fetch.fetch_model(request(dest))
    assert check_local(dest) == []


def test_gated_repo_without_token(hub: HubServer, tmp_path: Path) -> None:
    hub.state.repos[REPO_ID].gated = True
    dest = tmp_path / "model"
    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest))
    line = exc.value.line()
    assert "gated" in line and "401" in line
    assert "HF_TOKEN" in line and "hf auth login" in line
    assert not dest.exists()


def test_gated_repo_with_bad_token_never_prints_it(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hf_" + "Zq7" * 12
    repo = hub.state.repos[REPO_ID]
    repo.gated = True
    monkeypatch.setenv("HF_TOKEN", secret)
    dest = tmp_path / "model"
    logged: list[str] = []
    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest), log=logged.append)
    line = exc.value.line()
    assert "403" in line and "HF_TOKEN" in line
    assert secret not in line
    dry = model_fetch.render(model_fetch.dry_run_without_hub(
        request(dest, dry_run=True), PINS, exc.value))
    assert "*** (from HF_TOKEN)" in dry and secret not in dry

    repo.allowed_tokens.add(secret)
    result = model_fetch.fetch_model(request(dest), log=logged.append)
    out = model_fetch.render(result) + json.dumps(result.to_json(), default=str)
    captured = capsys.readouterr()
    assert secret not in out + captured.out + captured.err + "\n".join(logged)
    hub_auth = {r["authorization"] for r in hub.state.requests if r["role"] == "hub"}
    assert hub_auth == {f"Bearer {secret}"}
    # The token goes to the hub only; the CDN (another origin) never sees it.
    assert {r["authorization"] for r in hub.state.requests if r["role"] == "cdn"} == {None}


def test_wrong_revision(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest, revision="no-such-branch"))
    line = exc.value.line()
    assert "'no-such-branch' does not exist" in line and "--revision" in line
    assert not dest.exists()


def test_offline_complete_and_incomplete(hub: HubServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TurboError, match="no manifest"):
        model_fetch.fetch_model(request(dest))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    model_fetch.fetch_model(request(dest))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.state.reset_counts()
    ok = model_fetch.fetch_model(request(dest))
    assert ok.offline and ok.problems == []
    (dest / SHARD2).unlink()
    with (dest / "tokenizer.json").open("r+b") as fh:
        fh.truncate(3)
    with pytest.raises(TurboError) as exc:
        model_fetch.fetch_model(request(dest))
    line = exc.value.line()
    assert f"missing: {SHARD2}" in line and "truncated: tokenizer.json (3 of" in line
    assert "HF_HUB_OFFLINE" in line
    assert hub.state.requests == []  # offline means no request at all


def test_recorded_commit_is_reused(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    commit = hub.state.repos[REPO_ID].commit
    assert model_fetch.read_lock()[REPO_ID]["revision"] == commit
    assert request(tmp_path / "elsewhere").revision == commit  # this checkout's lock
    hub.state.reset_counts()
    plan = model_fetch.make_plan(request(dest), model_fetch.hub_from_env())
    assert plan.revision_source == "manifest"
    api = [r["path"] for r in hub.state.requests if r["path"].startswith("/api/")]
    assert api[0].endswith(f"/revision/{commit}")


def test_other_repo_in_dest_is_refused(hub: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    model_fetch.fetch_model(request(dest))
    with pytest.raises(TurboError, match="holds nvidia/Qwen3-Next-80B-A3B-Thinking-NVFP4"):
        model_fetch.fetch_model(request(dest, variant="instruct"))


def test_xet_transport_falls_back_to_http_without_xet_files(hub: HubServer,
                                                            tmp_path: Path) -> None:
    result = model_fetch.fetch_model(request(tmp_path / "model", transport="xet"))
    assert any("used HTTP" in n for n in result.notes)
    assert check_local(tmp_path / "model") == []


def test_variant_destination_and_bad_variant(tmp_path: Path) -> None:
    req = model_fetch.build_request(PINS, variant="instruct")
    assert req.repo == PINS.model.variants["instruct"]
    assert req.dest == Path(PINS.model.path).parent / "Qwen3-Next-80B-A3B-Instruct-NVFP4"
    with pytest.raises(TurboError, match="unknown variant 'fast'"):
        model_fetch.build_request(PINS, variant="fast")


# --------------------------------------------------------------------------- the CLI
def invoke(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "fetch-model", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def cli_env(hub: HubServer | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), MODEL=str(tmp_path / "cli-model"), **extra)
    env["HF_ENDPOINT"] = hub.url if hub else "http://127.0.0.1:9"  # port 9: nothing listens
    return env


def test_cli_dry_run_lists_files_and_writes_nothing(hub: HubServer, tmp_path: Path) -> None:
    secret = "hf_" + "Kp4" * 12
    hub.state.repos[REPO_ID].gated = True
    hub.state.repos[REPO_ID].allowed_tokens.add(secret)
    proc = invoke("--dry-run", "--json", env=cli_env(hub, tmp_path, HF_TOKEN=secret))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["dry_run"] and {f["path"] for f in data["files"]} == WANTED
    assert data["total_bytes"] == needed_bytes(hub)
    assert data["hub_env"]["token"] == "*** (from HF_TOKEN)"
    assert secret not in proc.stdout + proc.stderr
    assert not (tmp_path / "cli-model").exists()
    assert not [r for r in hub.state.requests if r["method"] == "GET" and "/resolve/" in r["path"]]


def test_cli_dry_run_without_network_shows_the_pinned_plan(tmp_path: Path) -> None:
    proc = invoke("--dry-run", env=cli_env(None, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "hub not consulted: cannot reach http://127.0.0.1:9" in proc.stdout
    assert "*.safetensors" in proc.stdout and "~45 GB" in proc.stdout


def test_cli_errors_are_one_line(hub: HubServer, tmp_path: Path) -> None:
    proc = invoke("--revision", "nope", env=cli_env(hub, tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: fetch-model ")
    assert "Traceback" not in proc.stderr
    bad = invoke("--variant", "fast", env=cli_env(hub, tmp_path))
    assert bad.returncode == 2 and "unknown variant" in bad.stderr


def test_cli_fetch_then_offline_check(hub: HubServer, tmp_path: Path) -> None:
    env = cli_env(hub, tmp_path)
    proc = invoke(env=env)
    assert proc.returncode == 0, proc.stderr
    assert "manifest " in proc.stdout
    assert check_local(tmp_path / "cli-model") == []
    offline = invoke("--offline", "--verify", "--json", env=env)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["problems"] == []


def test_server_ignoring_range_restarts_the_file(hub: HubServer, tmp_path: Path) -> None:
    """A 200 to a ranged GET is the whole file: the part starts over, not appended to, and
    the result does not report it as resumed."""
    dest = tmp_path / "model"
    size = len(repo_files(hub)[SHARD1].data)
    hub.state.faults[SHARD1] = Fault(MIB + MIB // 2)
    with pytest.raises(TurboError, match="interrupted"):
        model_fetch.fetch_model(request(dest))
    kept = next((dest / model_fetch.STAGING).glob("*.part")).stat().st_size
    assert 0 < kept < size
    hub.state.faults.clear()
    hub.state.reset_counts()
    hub.state.ignore_range = True
    logged: list[str] = []
    result = model_fetch.fetch_model(request(dest), log=logged.append)
    assert [g["range"] for g in cdn_gets(hub, SHARD1)] == [f"bytes={kept}-"]
    assert f"{SHARD1}: server ignored Range; restarting the file" in logged
    assert not [line for line in logged if "interrupted" in line or "do not match" in line]
    assert hub.state.bytes_sent[SHARD1] == size
    assert result.downloaded_bytes >= size  # the whole shard came again (plus small files)
    # Started over, so not a resume: neither the result nor its summary may claim one.
    assert SHARD1 not in result.resumed, result.resumed
    assert f"resumed {SHARD1}" not in model_fetch.render(result)
    assert (dest / SHARD1).read_bytes() == repo_files(hub)[SHARD1].data
    assert check_local(dest) == []
