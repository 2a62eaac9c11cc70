"""fetch-model: download the pinned NVFP4 checkpoint once, verified and resumable.

The command: it decides and composes; the pieces below it never call each other and pass the
plain data of ``fetch_data`` (request, hub, plan, result, staging record). ``fetch_hub`` asks
the hub which commit and which files, ``fetch_plan`` judges each file against the destination,
``fetch_verify`` hashes what is there, ``fetch_transfer`` moves one file's bytes into its part
(ranged, resumable), ``fetch_dest`` opens and closes the staging folder, ``fetch_report``
renders the result and what --dry-run says, ``fetch_local`` checks a local copy against its
manifest without the network. Carrying out a plan is here (``execute``): each file into
place, then the manifest last. The names other code and the tests use are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from turbo import paths
from turbo.errors import TurboError
from turbo.fetch_data import (
    GB,
    STAGING,
    TOKEN_FIX,
    FetchResult,
    FileAction,
    Hub,
    Plan,
    RemoteFile,
    Request,
    StagingRecord,
    check_repo_matches,
    hub_env_summary,
    left_alone,
    own,
    part_path,
    result_of,
    wanted,
    write_record,
)
from turbo.fetch_dest import close_staging, open_staging, remove_stale_parts
from turbo.fetch_hub import (
    LOCK_FILE,
    HubUnreachable,
    build_request,
    hub_error,
    hub_from_env,
    list_remote,
    lock_path,
    offline_from_env,
    probe_access,
    read_lock,
)
from turbo.fetch_local import check_offline, complete_locally
from turbo.fetch_plan import (
    check_disk,
    dest_refusal,
    free_bytes,
    plan_actions,
    plan_files,
    previous_manifest,
    resolve_revision,
    survey_dest,
)
from turbo.fetch_report import dry_run_result, render, would_request
from turbo.fetch_report import dry_run_without_hub as _dry_run_without_hub
from turbo.fetch_transfer import CHUNK, download_http, download_xet, xet_usable
from turbo.fetch_verify import check_index, identity, vet_unrecorded
from turbo.jsonfile import write_json_atomic
from turbo.manifest import (
    INDEX_NAME,
    Manifest,
    ManifestFile,
    check_local,
    git_blob_oid,
    sha256_file,
    write_manifest,
)
from turbo.outcome import Outcome, done
from turbo.pins import Pins
from turbo.redact import redact, strip_url_credentials

__all__ = [
    "CHUNK",
    "GB",
    "LOCK_FILE",
    "STAGING",
    "TOKEN_FIX",
    "FetchResult",
    "FileAction",
    "Hub",
    "HubUnreachable",
    "Plan",
    "RemoteFile",
    "Request",
    "build_request",
    "check_disk",
    "check_offline",
    "check_repo_matches",
    "complete_locally",
    "dest_refusal",
    "download_http",
    "download_xet",
    "dry_run_without_hub",
    "execute",
    "fetch_model",
    "free_bytes",
    "git_blob_oid",
    "hub_env_summary",
    "hub_error",
    "hub_from_env",
    "list_remote",
    "lock_path",
    "make_plan",
    "offline_from_env",
    "part_path",
    "plan_actions",
    "probe_access",
    "read_lock",
    "render",
    "run",
    "sha256_file",
    "survey_dest",
    "wanted",
    "would_request",
    "xet_usable",
]


def make_plan(req: Request, hub: Hub) -> Plan:
    """Ask the hub for the revision's files and judge each against DEST (nothing written).

    The free disk is measured by this module's ``free_bytes``, which tests replace."""
    previous, notes = previous_manifest(req)
    resolved = resolve_revision(req, previous)
    commit, files = list_remote(resolved, hub)
    probe_access(resolved, hub, commit, files[0])  # gating surfaces before any write
    return plan_files(resolved, hub, commit, files, previous, notes, free_bytes)


def dry_run_without_hub(req: Request, pins: Pins, err: TurboError) -> FetchResult:
    """What --dry-run can still say when the hub is unreachable: the pinned plan."""
    return _dry_run_without_hub(req, pins, err, free_bytes(req.dest), hub_from_env())


def fetch_model(
    req: Request, hub: Hub | None = None, log: Callable[[str], None] = lambda _line: None
) -> FetchResult:
    """The whole stage: offline check, or plan (+ disk check) and, unless a dry run, fetch."""
    if req.offline:
        log(f"offline check of {req.dest}")
        return check_offline(req)
    local = complete_locally(req)
    if local is not None:
        log(f"{req.dest}: complete per its manifest (sizes checked); hub not asked")
        return local
    h = hub or hub_from_env()
    log(f"planning {req.repo}@{req.revision} into {req.dest} via {h.endpoint}")
    plan = make_plan(req, h)
    refusal = dest_refusal(plan)
    if req.dry_run:
        return dry_run_result(plan, refusal)
    if refusal is not None:
        raise refusal
    check_disk(plan)
    return execute(plan, log)


def run(pins: Pins, **options: Any) -> Outcome:
    """What the CLI does: build the request, fetch (or dry-run, or check offline) with a log
    file. The outcome's text is the summary, its data the result as JSON-able data; secrets
    are out of both. Expected failures raise TurboError."""
    from turbo.console import TaskLog

    req = build_request(pins, **options)
    # Known before any download: a model dir this user cannot create (no /data as a normal
    # user, a read-only mount). --dry-run lists it as a problem; a real run stops here.
    unwritable = None if req.offline else paths.unwritable_reason(req.dest)
    where_fix = (
        "Pass --dest (or set MODEL) to a directory you can write, e.g. ~/models/qwen3-next; "
        "or create it as root and chown it to yourself."
    )
    if unwritable and not req.dry_run:
        raise TurboError(f"fetch-model into {req.dest}", unwritable, where_fix)
    with TaskLog("fetch-model") as tlog:
        try:
            result = fetch_model(req, log=tlog.write)
        except HubUnreachable as err:
            if not req.dry_run:
                raise
            result = dry_run_without_hub(req, pins, err)
        if not req.dry_run:
            result.notes.append(f"log {tlog.path}")
        elif unwritable:
            result.problems.append(f"would fail: {unwritable}. {where_fix}")
        tlog.write(render(result))
    return done(render(result), _redacted(result.to_json()))


def _redacted(value: Any) -> Any:
    """``value`` with every string passed through redact (what --json may print)."""
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def execute(plan: Plan, log: Callable[[str], None]) -> FetchResult:
    """Carry out a plan: resume, fetch, hash-check and move each file; manifest last.

    Nothing is written until every file fetch-model did not record has been vetted."""
    req = plan.request
    result = result_of(plan)
    refusal = dest_refusal(plan)
    if refusal is not None:
        raise refusal
    vet_unrecorded(plan, log, result)
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
    session = requests.Session()
    entries = [_place(plan, a, record, session, result, log) for a in plan.actions]
    _finish(plan, entries, record, result, log)
    return result


def _place(
    plan: Plan,
    action: FileAction,
    record: StagingRecord,
    session: requests.Session,
    result: FetchResult,
    log: Callable[[str], None],
) -> ManifestFile:
    """One file into place (kept, checked, or fetched), recorded as done; its manifest entry."""
    req = plan.request
    recorded = plan.previous.by_path() if plan.previous else {}
    f, final = action.file, req.dest / action.file.path
    entry = action.entry or record.done.get(f.path) or recorded.get(f.path)
    if action.state == "have" and entry is not None:
        record.done[f.path] = entry
        return entry
    if action.state == "check":
        ok, entry = identity(f, final)
        if ok:
            log(f"{f.path}: hash matches the hub")
            record.done[f.path] = entry
            write_record(req.dest, record)
            return entry
        log(f"{f.path}: hash differs from the hub's; re-fetching")
        result.repaired.append(f.path)
    elif action.unrecorded and f.path not in result.repaired:
        result.repaired.append(f.path)  # someone else's, let go with --adopt-existing
    entry = _fetch_one(plan, f, session, result, log)
    # Replaces a recorded file, or one the user let go with --adopt-existing (a symlink is
    # replaced itself; its target is never written).
    os.replace(part_path(req.dest, f), final)
    record.done[f.path] = entry
    write_record(req.dest, record)
    if f.path == INDEX_NAME:
        check_index(req.dest, [a.file for a in plan.actions])
    return entry


def _finish(
    plan: Plan,
    entries: list[ManifestFile],
    record: StagingRecord,
    result: FetchResult,
    log: Callable[[str], None],
) -> None:
    """Every file in place: check the copy, write the manifest, close staging, pin the lock."""
    req = plan.request
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
            part, digest = download_xet(
                plan, f, log, lambda exc: hub_error(exc, req, plan.hub, plan.commit)
            )
            result.downloaded_bytes += f.size
        else:
            if req.transport == "xet" and f.path.endswith(".safetensors"):
                result.notes.append(f"{f.path}: no Xet hash or hf_xet missing; used HTTP")
            part, digest, counts = download_http(plan, f, session, log)
            result.downloaded_bytes += counts.sent
            if counts.resumed_from:
                result.resumed[f.path] = counts.resumed_from
        ok, entry = identity(f, part, digest)
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
