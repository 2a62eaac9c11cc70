"""fetch-model's transfer: one file from the hub into its content-addressed part file.

The hub client writes each download to a process-unique ``*.incomplete`` file, so a killed run
of it starts every unfinished shard over. Here the bytes go into a stable
``<dest>/.turbo-fetch/<hash>.part`` with ranged GETs: a run picks the part up where it stopped
and hashes it as it grows. Checking the hash and moving the file into place is the command's.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

# Hashing is looked up on the manifest module at call time, so a test that forbids hashing
# there (tests/test_fetch_offline.py) sees every hash this module would take.
from turbo import manifest as manifest_mod
from turbo.errors import TurboError
from turbo.fetch_data import TOKEN_FIX, Plan, RemoteFile, own, part_path, staging_dir, truthy
from turbo.redact import redact

CHUNK = 1 << 20


class _Progress:
    """A byte progress bar (tqdm, which huggingface_hub already depends on) or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str, initial: int = 0) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self, n: int = 0) -> None:
        if self._bar is not None:
            self._bar.reset(total=self._bar.total)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


@dataclass
class _Transfer:
    sent: int = 0  # bytes received in this run
    resumed_from: int = 0


@dataclass
class _Part:
    """A part file as it grows: bytes on disk, their running hash, the retry count."""

    path: Path
    size: int  # the file's size on the hub
    bar: _Progress
    counts: _Transfer
    have: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    failures: int = 0

    def restart(self, *, unlink: bool, bar: bool) -> None:
        """Start this file over (the bytes so far cannot be continued)."""
        if unlink:
            self.path.unlink(missing_ok=True)
        self.have, self.hasher = 0, hashlib.sha256()
        self.counts.resumed_from = 0  # the file now comes from byte 0: not a resume
        if bar:
            self.bar.reset()


def download_http(
    plan: Plan, f: RemoteFile, session: requests.Session, log: Callable[[str], None]
) -> tuple[Path, str, _Transfer]:
    """Ranged GETs into the file's part until it is complete; returns (part, sha256, counts).

    The part is hashed as it grows (its existing prefix first), so a 5 GB shard is read once.
    """
    from huggingface_hub import hf_hub_url

    # Exported lazily by huggingface_hub, which mypy cannot see.
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    req, hub = plan.request, plan.hub
    path = part_path(req.dest, f)
    if plan.record is not None:
        own(req.dest, plan.record, part=path.name)  # recorded before its first byte
    url = hf_hub_url(req.repo, f.path, revision=plan.commit, endpoint=hub.endpoint)
    base_headers = dict(build_hf_headers(token=hub.token or False))
    base_headers["Accept-Encoding"] = "identity"
    part = _open_part(path, f, req.progress, log)
    try:
        while part.have < f.size:
            try:
                _get_range(session, url, base_headers, part, f, req.repo, log)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                _retry_or_give_up(part, f, req.retries, req.backoff_s, exc, log)
    finally:
        part.bar.close()
    return part.path, part.hasher.hexdigest(), part.counts


def _open_part(path: Path, f: RemoteFile, progress: bool, log: Callable[[str], None]) -> _Part:
    """The part as found on disk, its prefix hashed (one longer than the file is dropped)."""
    have = path.stat().st_size if path.is_file() else 0
    if have > f.size:
        path.unlink()
        have = 0
    hasher = hashlib.sha256()
    if have:
        with path.open("rb") as fh:
            while block := fh.read(CHUNK * 8):
                hasher.update(block)
        log(f"resume {f.path} from byte {have} of {f.size}")
    counts = _Transfer(resumed_from=have)
    bar = _Progress(progress, f.size, f.path, have)
    return _Part(path, f.size, bar, counts, have, hasher)


def _get_range(
    session: requests.Session,
    url: str,
    base_headers: dict[str, str],
    part: _Part,
    f: RemoteFile,
    repo: str,
    log: Callable[[str], None],
) -> None:
    """One GET from the part's end; a retryable failure raises requests.ConnectionError."""
    headers = dict(base_headers)
    if part.have:
        headers["Range"] = f"bytes={part.have}-"
    with session.get(
        url, headers=headers, stream=True, timeout=(15, 60), allow_redirects=True
    ) as r:
        _check_answer(r, part, f, repo, log)
        r.raise_for_status()
        _write_body(r, part)
    if part.have > f.size:
        part.restart(unlink=True, bar=False)
        raise requests.ConnectionError("server sent more bytes than the file has")


def _check_answer(
    r: requests.Response, part: _Part, f: RemoteFile, repo: str, log: Callable[[str], None]
) -> None:
    """Refuse access errors, retry server errors, and start over when the range is not
    honoured as asked."""
    if r.status_code in (401, 403, 404):
        raise TurboError(
            f"fetch-model {repo}",
            f"{f.path}: the hub answered HTTP {r.status_code} during the download",
            f"Check access ({TOKEN_FIX}) and re-run; it resumes.",
        )
    if r.status_code == 416 or (r.status_code >= 500 or r.status_code == 429):
        if r.status_code == 416:
            part.restart(unlink=True, bar=True)
        raise requests.ConnectionError(f"HTTP {r.status_code}")
    if part.have and r.status_code == 200:
        # The server ignored the Range header: start this file over.
        log(f"{f.path}: server ignored Range; restarting the file")
        part.restart(unlink=False, bar=True)
    elif part.have and _content_range_start(r.headers.get("Content-Range")) != part.have:
        part.restart(unlink=True, bar=True)
        raise requests.ConnectionError("unexpected Content-Range")


def _write_body(r: requests.Response, part: _Part) -> None:
    """Append the response body to the part (hashing it), synced to disk."""
    with part.path.open("r+b" if part.have else "wb") as out:
        out.seek(part.have)
        out.truncate()
        for chunk in r.iter_content(chunk_size=CHUNK):
            if not chunk:
                continue
            out.write(chunk)
            part.hasher.update(chunk)
            part.have += len(chunk)
            part.counts.sent += len(chunk)
            part.bar.update(len(chunk))
            part.failures = 0  # progress made: the retry budget starts again
            if part.have > part.size:
                break
        out.flush()
        os.fsync(out.fileno())


def _retry_or_give_up(
    part: _Part,
    f: RemoteFile,
    retries: int,
    backoff_s: float,
    exc: Exception,
    log: Callable[[str], None],
) -> None:
    """Count an interrupted GET; back off, or stop with the line that says how to resume."""
    part.failures += 1
    log(
        f"{f.path}: interrupted at byte {part.have} of {f.size} ({exc.__class__.__name__}"
        f"), attempt {part.failures} of {retries}"
    )
    if part.failures > retries:
        raise TurboError(
            f"download of {f.path}",
            f"interrupted at byte {part.have} of {f.size} after {retries} retries "
            f"({redact(str(exc))[:120]})",
            "Re-run the same command: it resumes from there.",
        ) from exc
    time.sleep(min(backoff_s * 2 ** (part.failures - 1), 60.0))


def download_xet(
    plan: Plan,
    f: RemoteFile,
    log: Callable[[str], None],
    fail: Callable[[Exception], TurboError],
) -> tuple[Path, str]:
    """The hub client's own download (hf_xet when the file is Xet-backed), into staging.

    Faster on the real hub, but a killed run restarts this file (hf_xet keeps no partial file
    we can continue); the result is hashed and checked like any other download. ``fail`` turns
    the hub client's exception into the line to stop with.
    """
    from huggingface_hub import hf_hub_download

    req, hub = plan.request, plan.hub
    where = staging_dir(req.dest) / "xet"
    if plan.record is not None:
        own(req.dest, plan.record, folder=where.name, part=part_path(req.dest, f).name)
    try:
        got = Path(
            hf_hub_download(
                req.repo,
                f.path,
                revision=plan.commit,
                local_dir=where,
                token=hub.token or False,
                endpoint=hub.endpoint,
            )
        )
    except Exception as exc:
        raise fail(exc) from exc
    part = part_path(req.dest, f)
    os.replace(got, part)
    log(f"{f.path}: fetched by huggingface_hub (xet path)")
    return part, manifest_mod.sha256_file(part)


def xet_usable(f: RemoteFile) -> bool:
    # Same rule as the hub client (hf_xet installed, HF_HUB_DISABLE_XET unset), read now.
    import importlib.util

    return (
        bool(f.xet_hash)
        and not truthy(os.environ.get("HF_HUB_DISABLE_XET"))
        and importlib.util.find_spec("hf_xet") is not None
    )
