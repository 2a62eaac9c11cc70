"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that huggingface_hub uses
to resolve a revision, list files and download them. 127.0.0.1 only, in-process threads.

Routes (as huggingface_hub 2.4 sends them; read from its hf_api.py and file_download.py):
  GET  /api/models/{repo}/revision/{rev}         repo info with ``sha`` (the commit)
  GET  /api/models/{repo}/tree/{rev}?recursive=  files with size, git oid, LFS sha256
  HEAD /{repo}/resolve/{rev}/{path}              ETag, X-Repo-Commit, X-Linked-Size/-Etag;
  GET  /{repo}/resolve/{rev}/{path}              small files inline, LFS files 302 to the CDN
  GET  /cdn/{sha256}  (on a second port)         the bytes, with Range support
Errors carry X-Error-Code like the Hub's (RevisionNotFound, GatedRepo, RepoNotFound,
EntryNotFound), which is what the client turns into its exception classes.

Fault injection for the tests: drop the connection after N bytes of a file, then answer 503
for that file until the fault is cleared; count every body byte sent per file.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class HubFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def oid(self) -> str:
        # For LFS files the git blob is the pointer, as on the real hub.
        return git_oid(self.pointer if self.lfs else self.data)

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": len(self.data),
                                 "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data),
                            "pointerSize": len(self.pointer)}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)

    @property
    def commit(self) -> str:
        h = hashlib.sha1(usedforsecurity=False)
        for path in sorted(self.files):
            h.update(path.encode() + b"\0" + self.files[path].oid.encode())
        return h.hexdigest()

    def resolve(self, rev: str) -> str | None:
        return self.commit if rev in ("main", self.commit) else None


@dataclass
class Fault:
    budget: int  # body bytes of the file to send in total before dropping the connection
    dropped: bool = False


@dataclass
class HubState:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # A proxy that strips Range: every GET of a file's bytes answers 200 with all of it.
    ignore_range: bool = False

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def reset_counts(self) -> None:
        with self.lock:
            self.bytes_sent.clear()
            self.requests.clear()

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha256:
                    return f
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; the state records every request

    # ------------------------------------------------------------------ helpers
    def _record(self) -> None:
        with self.server.state.lock:
            self.server.state.requests.append({
                "role": self.server.role, "method": self.command, "path": self.path,
                "range": self.headers.get("Range"),
                "authorization": self.headers.get("Authorization"),
            })

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message})

    def _json(self, data: Any) -> None:
        self._send(200, json.dumps(data).encode())

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    # ------------------------------------------------------------------ routes
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        self._record()
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if self.server.role == "cdn":
            if len(parts) == 2 and parts[0] == "cdn":
                blob = self.server.state.blob(parts[1])
                if blob is not None:
                    return self._serve_bytes(blob)
            return self._error(404, "EntryNotFound", "no such blob")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo = self.server.state.repos.get(f"{parts[2]}/{parts[3]}")
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            if parts[4] == "revision":
                return self._revision(repo, parts[5])
            if parts[4] == "tree":
                return self._tree(repo, parts[5], parse_qs(url.query))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.server.state.repos.get(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        return self._error(404, "EntryNotFound", f"no route for {url.path}")

    def _revision(self, repo: HubRepo, rev: str) -> None:
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        self._json({"_id": "x", "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit,
                    "private": False, "gated": "manual" if repo.gated else False,
                    "disabled": False, "tags": [], "downloads": 0, "likes": 0,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, repo: HubRepo, rev: str, query: dict[str, list[str]]) -> None:
        if repo.resolve(rev) is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in sorted(repo.files):
            if "/" in path:
                folders.add(path.split("/")[0])
                if not recursive:
                    continue
            entries.append(repo.files[path].tree_entry())
        entries += [{"type": "directory", "oid": git_oid(d.encode()), "size": 0, "path": d}
                    for d in sorted(folders)]
        self._json(entries)

    def _resolve(self, repo: HubRepo, rev: str, path: str) -> None:
        if repo.gated:
            token = self._token()
            if token is None:
                return self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is "
                                   "restricted. You must be authenticated to access it.")
            if token not in repo.allowed_tokens:
                return self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is "
                                   "restricted and you are not in the authorized list.")
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"{self.server.cdn_url}/cdn/{f.sha256}?expires=3600"
            self._send(302, b"", {**common, "Location": location, "ETag": f'"{f.oid}"',
                                  "X-Linked-Size": str(len(f.data)),
                                  "X-Linked-Etag": f'"{f.sha256}"'})
            return None
        return self._serve_bytes(f, {**common, "ETag": f'"{f.oid}"'})

    def _serve_bytes(self, f: HubFile, extra: dict[str, str] | None = None) -> None:
        state = self.server.state
        fault = state.faults.get(f.path)
        if fault is not None and fault.dropped and self.command == "GET":
            return self._error(503, "Unavailable", "temporarily unavailable")
        start, status = 0, 200
        rng = None if state.ignore_range else self.headers.get("Range")
        headers = {"Accept-Ranges": "bytes", **(extra or {})}
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(f.data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(f.data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
        body = f.data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return None
        limit = len(body)
        if fault is not None and not fault.dropped:
            with state.lock:
                limit = min(limit, max(0, fault.budget - state.bytes_sent[f.path]))
        view = memoryview(body)
        sent = 0
        while sent < limit:
            n = min(64 * 1024, limit - sent)
            self.wfile.write(view[sent:sent + n])
            sent += n
            with state.lock:
                state.bytes_sent[f.path] += n
        if limit < len(body):
            assert fault is not None
            fault.dropped = True
            self.wfile.flush()
            # An abrupt end mid-body, as when a connection breaks: the client sees fewer bytes
            # than Content-Length promised.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.role = role
        self.cdn_url = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubServer:
    """Hub and CDN, both on 127.0.0.1, the CDN addressed as another host."""

    def __init__(self) -> None:
        self.state = HubState()
        self._hub = _Server(self.state, "hub")
        self._cdn = _Server(self.state, "cdn")
        # The CDN is another origin, as on the real hub: another host name (still 127.0.0.1)
        # and port, so neither client forwards the token there on a redirect.
        self._hub.cdn_url = f"http://localhost:{self._cdn.server_address[1]}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self._hub, self._cdn)]

    @property
    def url(self) -> str:
        return self._hub.url

    def __enter__(self) -> HubServer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()
