"""fetch-model's transfer: ranged GETs into content-addressed part files, hash-checked.

The hub client writes each download to a process-unique ``*.incomplete`` file, so a killed run
of it starts every unfinished shard over. Here the bytes go into a stable
``<dest>/.turbo-fetch/<hash>.part``: a run picks the part up where it stopped, checks its hash,
and only then moves it into place. The manifest is written last, so its presence means the copy
is complete.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

# Hashing is looked up on the manifest module at call time, so a test that forbids hashing
# there (tests/test_fetch_offline.py) sees every hash this module would take.
from turbo import manifest as manifest_mod
from turbo.console import redact, strip_url_credentials
from turbo.errors import TurboError
from turbo.fetch_dest import (
    ADOPT_FLAG,
    close_staging,
    listing,
    open_staging,
    own,
    remove_stale_parts,
    staging_dir,
    write_record,
)
from turbo.fetch_hub import TOKEN_FIX, hub_error, lock_path, probe_access, read_lock
from turbo.fetch_plan import (
    ADOPT_FIX,
    FetchResult,
    FileAction,
    Plan,
    RemoteFile,
    dest_refusal,
    left_alone,
    part_path,
    result_of,
    truthy,
)
from turbo.jsonfile import write_json_atomic
from turbo.manifest import (
    INDEX_NAME,
    Manifest,
    ManifestFile,
    check_local,
    index_shards,
    write_manifest,
)

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


def download_xet(plan: Plan, f: RemoteFile, log: Callable[[str], None]) -> tuple[Path, str]:
    """The hub client's own download (hf_xet when the file is Xet-backed), into staging.

    Faster on the real hub, but a killed run restarts this file (hf_xet keeps no partial file
    we can continue); the result is hashed and checked like any other download.
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
        raise hub_error(exc, req, hub, plan.commit) from exc
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


def _identity(f: RemoteFile, path: Path, sha256: str | None = None) -> tuple[bool, ManifestFile]:
    """Hash ``path`` and say whether it is exactly ``f`` (sha256 for LFS, git blob id else)."""
    digest = sha256 or manifest_mod.sha256_file(path)
    oid = f.git_oid if f.sha256 else manifest_mod.git_blob_oid(path)
    ok = path.stat().st_size == f.size and (digest == f.sha256 if f.sha256 else oid == f.git_oid)
    return ok, ManifestFile(f.path, f.size, digest, oid)


def _vet_unrecorded(plan: Plan, log: Callable[[str], None], result: FetchResult) -> None:
    """Hash every right-sized file fetch-model did not record, before anything is written:
    equal to the hub's, it is kept; different, it is replaced only with --adopt-existing."""
    differ: list[FileAction] = []
    for a in plan.actions:
        if a.state != "check" or not a.unrecorded:
            continue
        ok, entry = _identity(a.file, plan.request.dest / a.file.path)
        if ok:
            log(f"{a.file.path}: not recorded, hash matches the hub: kept")
            a.state, a.entry = "have", entry
        else:
            differ.append(a)
    if differ and not plan.request.adopt_existing:
        names = [f"{a.file.path} (not recorded; its hash differs from the hub's)" for a in differ]
        raise TurboError(
            f"fetch-model into {plan.request.dest}",
            f"it holds files fetch-model did not write: {listing(names)}",
            ADOPT_FIX,
        )
    for a in differ:
        log(f"{a.file.path}: not recorded and differs from the hub's: replaced ({ADOPT_FLAG})")
        result.repaired.append(a.file.path)
        a.state = "fetch"


def _check_index(dest: Path, files: list[RemoteFile]) -> None:
    shards = index_shards(dest)
    if shards is None:
        return
    listed = {f.path for f in files}
    missing = [s for s in shards if s not in listed]
    if shards == [] or missing:
        raise TurboError(
            f"{INDEX_NAME} in {dest}",
            f"names shards the hub does not list: {', '.join(missing[:3]) or '(no weight_map)'}",
            "The checkpoint is inconsistent at this revision; pick another one with --revision.",
        )


def execute(plan: Plan, log: Callable[[str], None]) -> FetchResult:
    """Carry out a plan: resume, fetch, hash-check and move each file; manifest last.

    Nothing is written until every file fetch-model did not record has been vetted."""
    req = plan.request
    result = result_of(plan)
    refusal = dest_refusal(plan)
    if refusal is not None:
        raise refusal
    _vet_unrecorded(plan, log, result)
    req.dest.mkdir(parents=True, exist_ok=True)
    record = open_staging(req.dest, req.repo, req.adopt_existing)
    plan.record = record
    keep = {part_path(req.dest, a.file).name for a in plan.actions}
    for a in plan.actions:
        if a.foreign_part:  # only reachable with --adopt-existing
            own(req.dest, record, part=part_path(req.dest, a.file).name)
    result.cleaned = remove_stale_parts(req.dest, record, keep)
    for c in result.cleaned:
        log(f"removed leftover {c}")
    recorded = plan.previous.by_path() if plan.previous else {}
    session = requests.Session()
    entries: list[ManifestFile] = []
    for action in plan.actions:
        f, final = action.file, req.dest / action.file.path
        entry = action.entry or record.done.get(f.path) or recorded.get(f.path)
        if action.state == "have" and entry is not None:
            entries.append(entry)
            record.done[f.path] = entry
            continue
        if action.state == "check":
            ok, entry = _identity(f, final)
            if ok:
                log(f"{f.path}: hash matches the hub")
                entries.append(entry)
                record.done[f.path] = entry
                write_record(req.dest, record)
                continue
            log(f"{f.path}: hash differs from the hub's; re-fetching")
            result.repaired.append(f.path)
        elif action.unrecorded and f.path not in result.repaired:
            result.repaired.append(f.path)  # someone else's, let go with --adopt-existing
        entry = _fetch_one(plan, f, session, result, log)
        # Replaces a recorded file, or one the user let go with --adopt-existing (a symlink is
        # replaced itself; its target is never written).
        os.replace(part_path(req.dest, f), final)
        entries.append(entry)
        record.done[f.path] = entry
        write_record(req.dest, record)
        if f.path == INDEX_NAME:
            _check_index(req.dest, [a.file for a in plan.actions])
    manifest = Manifest(
        repo=req.repo,
        revision=plan.commit,
        files=tuple(entries),
        fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
        requested_revision=req.revision,
        # What was asked for: a later run with other patterns must ask the hub again.
        extra={"include": list(req.include)},
        # The manifest outlives the run and travels to other machines: no credentials in it.
        endpoint=strip_url_credentials(plan.hub.endpoint),
    )
    problems = check_local(req.dest, manifest)
    if problems:
        raise TurboError(
            f"fetch-model into {req.dest}", "; ".join(problems[:3]), "Re-run the same command."
        )
    result.manifest = str(write_manifest(req.dest, manifest))
    left = left_alone(plan, close_staging(req.dest, record))
    if left:
        result.notes.append(left)
        log(left)
    lock = read_lock()
    lock[req.repo] = {"revision": plan.commit, "requested": req.revision, "at": manifest.fetched_at}
    write_json_atomic(lock_path(), lock)
    log(f"manifest written: {result.manifest}")
    return result


def _fetch_one(
    plan: Plan,
    f: RemoteFile,
    session: requests.Session,
    result: FetchResult,
    log: Callable[[str], None],
) -> ManifestFile:
    """Download one file into its part and check it; a bad hash is retried once from zero."""
    req = plan.request
    for attempt in (1, 2):
        probe_access(req, plan.hub, plan.commit, f)
        if req.transport == "xet" and xet_usable(f):
            part, digest = download_xet(plan, f, log)
            result.downloaded_bytes += f.size
        else:
            if req.transport == "xet" and f.path.endswith(".safetensors"):
                result.notes.append(f"{f.path}: no Xet hash or hf_xet missing; used HTTP")
            part, digest, counts = download_http(plan, f, session, log)
            result.downloaded_bytes += counts.sent
            if counts.resumed_from:
                result.resumed[f.path] = counts.resumed_from
        ok, entry = _identity(f, part, digest)
        if ok:
            log(f"{f.path}: {f.size} bytes, sha256 {digest[:16]}... ok")
            return entry
        part.unlink(missing_ok=True)
        log(f"{f.path}: downloaded bytes do not match the hub's hash (attempt {attempt})")
    raise TurboError(
        f"download of {f.path}",
        "the downloaded bytes do not match the hub's hash, twice",
        "Re-run later; if it repeats, a proxy may alter downloads.",
    )
