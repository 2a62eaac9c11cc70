"""fetch-model: download the pinned NVFP4 checkpoint once, verified and resumable.

The command: it decides and the stages describe. ``fetch_hub`` asks the hub which commit and
which files, ``fetch_plan`` judges each file against the destination, ``fetch_transfer`` moves
the bytes (ranged, resumable, hash-checked; manifest last), ``fetch_report`` renders the result
and what --dry-run says, ``fetch_local`` checks a local copy against its manifest without the
network, ``fetch_dest`` guards what fetch-model did not write. The names other code and the
tests use are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from turbo import paths
from turbo.console import redact
from turbo.errors import TurboError
from turbo.fetch_dest import STAGING
from turbo.fetch_hub import (
    LOCK_FILE,
    TOKEN_FIX,
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
    GB,
    FetchResult,
    FileAction,
    Hub,
    Plan,
    RemoteFile,
    Request,
    check_disk,
    check_repo_matches,
    dest_refusal,
    free_bytes,
    hub_env_summary,
    part_path,
    plan_actions,
    plan_files,
    previous_manifest,
    resolve_revision,
    survey_dest,
    wanted,
)
from turbo.fetch_report import dry_run_result, render, would_request
from turbo.fetch_report import dry_run_without_hub as _dry_run_without_hub
from turbo.fetch_transfer import CHUNK, download_http, download_xet, execute, xet_usable
from turbo.manifest import git_blob_oid, sha256_file
from turbo.pins import Pins

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
    return _dry_run_without_hub(req, pins, err, free_bytes(req.dest))


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


def run(pins: Pins, *, as_json: bool = False, **options: Any) -> str:
    """What the CLI does: build the request, fetch (or dry-run, or check offline) with a log
    file, and return the text to print. Expected failures raise TurboError."""
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
    if as_json:
        return redact(json.dumps(result.to_json(), indent=2, default=str))
    return render(result)
