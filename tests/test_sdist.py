"""turbo.sdist: index lookup (PEP 691 JSON), sha256 checks, caching, atomic unpack.

Most tests talk to a tiny local index (http.server in a thread) so every branch runs offline;
one test checks the real cached sdist against the sha256 pinned in pins.toml.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from turbo import sdist
from turbo.errors import TurboError
from turbo.pins import load_pins


def _tarball(version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        body = b"cmake_minimum_required(VERSION 3.26)\n"
        info = tarfile.TarInfo(f"vllm-{version}/CMakeLists.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@dataclass
class FakeIndex:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    published_sha: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def fake_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeIndex]:
    state = FakeIndex(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/simple/vllm/":
                accept = self.headers.get("Accept", "")
                files = [
                    {"filename": n, "url": f"../../files/{n}",
                     "hashes": {"sha256": state.published_sha.get(n)
                                or hashlib.sha256(b).hexdigest()}, "size": len(b)}
                    for n, b in state.files.items()
                ]
                body = json.dumps({"name": "vllm", "files": files}).encode()
                ctype = sdist.SIMPLE_JSON if sdist.SIMPLE_JSON in accept else "text/html"
            elif self.path.startswith("/files/") and self.path[7:] in state.files:
                body, ctype = state.files[self.path[7:]], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    monkeypatch.setenv("PIP_INDEX_URL", state.url)
    monkeypatch.setenv("TURBO_CACHE", str(tmp_path / "cache"))
    yield state
    server.shutdown()


def test_index_url_respects_pip_index_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://mirror.invalid/simple")
    assert sdist.index_url() == "http://mirror.invalid/simple"
    monkeypatch.delenv("PIP_INDEX_URL")
    from pip._internal.models.index import PyPI

    assert sdist.index_url() == PyPI.simple_url


def test_download_verifies_caches_and_unpacks(fake_index: FakeIndex, tmp_path: Path) -> None:
    fake_index.files["vllm-9.9.9.tar.gz"] = _tarball("9.9.9")
    got = sdist.vllm_sdist("9.9.9")
    assert got.read_bytes() == fake_index.files["vllm-9.9.9.tar.gz"]
    assert got.parent == tmp_path / "cache" / "sdist"
    assert not list(got.parent.glob("*.part")), "temporary file left behind"
    # Cached: a second call does not touch the network.
    before = len(fake_index.requests)
    assert sdist.vllm_sdist("9.9.9") == got
    assert len(fake_index.requests) == before
    root = sdist.unpack_vllm_sdist(tmp_path / "src", "9.9.9")
    assert root == tmp_path / "src" / "vllm-9.9.9"
    assert (root / "CMakeLists.txt").read_text().startswith("cmake_minimum_required")
    assert [p.name for p in (tmp_path / "src").iterdir()] == ["vllm-9.9.9"]


def test_hash_mismatch_is_refused_and_nothing_cached(fake_index: FakeIndex) -> None:
    fake_index.files["vllm-9.9.9.tar.gz"] = _tarball("9.9.9")
    fake_index.published_sha["vllm-9.9.9.tar.gz"] = "0" * 64
    with pytest.raises(TurboError, match="does not match"):
        sdist.vllm_sdist("9.9.9")
    assert not list(sdist.sdist_dir().glob("*")), "a bad download must not reach the cache"


def test_pinned_version_must_match_pins_sha(fake_index: FakeIndex) -> None:
    ver = load_pins().vllm.sdist_version
    # The index (honestly) publishes this file's hash, but it is not the file pins.toml recorded.
    fake_index.files[f"vllm-{ver}.tar.gz"] = _tarball(ver)
    with pytest.raises(TurboError, match=r"pins\.toml records"):
        sdist.vllm_sdist()
    assert not (sdist.sdist_dir() / f"vllm-{ver}.tar.gz").exists()


def test_corrupt_cached_pinned_file_is_not_used(fake_index: FakeIndex) -> None:
    ver = load_pins().vllm.sdist_version
    cached = sdist.sdist_dir() / f"vllm-{ver}.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    fake_index.files[f"vllm-{ver}.tar.gz"] = _tarball(ver)
    with pytest.raises(TurboError, match=r"pins\.toml records"):
        sdist.vllm_sdist()
    assert not cached.exists()


def test_unknown_version_is_one_clear_error(fake_index: FakeIndex) -> None:
    with pytest.raises(TurboError, match=r"vllm-0\.0\.1\.tar\.gz: not listed"):
        sdist.vllm_sdist("0.0.1")


def test_real_sdist_matches_the_pinned_sha(vllm_sdist_pristine: Path) -> None:
    pins = load_pins().vllm
    archive = sdist.vllm_sdist()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == pins.sdist_sha256
    assert vllm_sdist_pristine.name == f"vllm-{pins.sdist_version}"
    for part in ("CMakeLists.txt", "cmake/utils.cmake", "csrc/quantization/fp4/nvfp4_utils.cuh",
                 "vllm/model_executor/layers/quantization/modelopt.py"):
        assert (vllm_sdist_pristine / part).is_file(), part


# --------------------------------------------------------------------------- any release (matrix)
def test_list_releases_sorts_numerically_and_drops_prereleases(fake_index: FakeIndex) -> None:
    for v in ("0.9.0", "0.10.0", "0.10.1rc1", "0.8.0"):
        fake_index.files[f"vllm-{v}.tar.gz"] = _tarball(v)
    fake_index.files["vllm-0.11.0-py3-none-any.whl"] = b"wheel"
    assert [v for v, _ in sdist.list_releases()] == ["0.8.0", "0.9.0", "0.10.0"]
    assert [v for v, _ in sdist.list_releases(minimum="0.9.0")] == ["0.9.0", "0.10.0"]


def test_plan_says_how_much_then_fetches_and_needs_no_network_after(
    fake_index: FakeIndex,
) -> None:
    for v in ("1.0.0", "1.0.1"):
        fake_index.files[f"vllm-{v}.tar.gz"] = _tarball(v)
    plan = sdist.plan_fetch(["1.0.0", "1.0.1"])
    size = sum(len(fake_index.files[f"vllm-{v}.tar.gz"]) for v in ("1.0.0", "1.0.1"))
    assert plan.download_bytes == size and not plan.cached
    assert "will download 2" in plan.describe()
    got = sdist.fetch_planned(plan)
    assert {v: p.read_bytes() for v, p in got.items()} == {
        v: fake_index.files[f"vllm-{v}.tar.gz"] for v in ("1.0.0", "1.0.1")
    }
    side = sdist.cached_path("1.0.0").with_name("vllm-1.0.0.tar.gz.sha256")
    assert side.read_text().split() == [
        hashlib.sha256(fake_index.files["vllm-1.0.0.tar.gz"]).hexdigest(),
        "vllm-1.0.0.tar.gz",
    ]
    before = len(fake_index.requests)
    again = sdist.plan_fetch(["1.0.0", "1.0.1"])
    assert not again.missing and again.describe().startswith("all 2 sdist(s) cached")
    assert len(fake_index.requests) == before, "a fully cached plan must not ask the index"


def test_corrupt_cached_release_is_not_trusted(fake_index: FakeIndex) -> None:
    fake_index.files["vllm-2.0.0.tar.gz"] = _tarball("2.0.0")
    path = sdist.vllm_sdist("2.0.0")
    path.write_bytes(b"bit rot")
    assert sdist.cached_sdist("2.0.0") is None
    assert sdist.plan_fetch(["2.0.0"]).missing
    assert sdist.vllm_sdist("2.0.0").read_bytes() == fake_index.files["vllm-2.0.0.tar.gz"]


def test_file_cached_before_sidecars_is_checked_once_against_the_index(
    fake_index: FakeIndex,
) -> None:
    body = _tarball("3.0.0")
    fake_index.files["vllm-3.0.0.tar.gz"] = body
    cached = sdist.cached_path("3.0.0")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    assert sdist.cached_sdist("3.0.0") is None  # unknown hash: not trusted offline
    assert sdist.vllm_sdist("3.0.0") == cached
    before = len(fake_index.requests)
    assert sdist.cached_sdist("3.0.0") == cached
    assert sdist.vllm_sdist("3.0.0") == cached
    assert len(fake_index.requests) == before
