"""fetch-model's plan: judge each file the hub lists against what the destination holds.

Per file have / check / resume / fetch from what is on disk, what the destination holds that
fetch-model did not write (see fetch_dest), and whether the download fits. No network and no
hashing here: the hub's answers come in as plain data (fetch_data).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from turbo import paths
from turbo.errors import TurboError
from turbo.fetch_data import (
    ADOPT_FIX,
    GB,
    STAGING,
    FileAction,
    Hub,
    Plan,
    RemoteFile,
    Request,
    StagingRecord,
    check_repo_matches,
    listing,
    part_path,
    read_record,
    staging_dir,
    staging_problem,
    unrelated_entries,
)
from turbo.manifest import MANIFEST_NAME, Manifest, ManifestFile, ManifestUnusable, read_manifest


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``.

    Tests replace ``model_fetch.free_bytes``, which the command passes to ``plan_files``."""
    return shutil.disk_usage(paths.nearest_existing(path)).free


def _recorded(entry: ManifestFile | None, f: RemoteFile) -> bool:
    """Does a recorded local file describe exactly this remote file?"""
    if entry is None or entry.size != f.size:
        return False
    if f.sha256:
        return entry.sha256 == f.sha256
    return bool(entry.git_oid) and entry.git_oid == f.git_oid


def plan_actions(
    req: Request,
    files: list[RemoteFile],
    previous: Manifest | None,
    record: StagingRecord | None = None,
) -> list[FileAction]:
    """What to do with each file, from what is on disk (no hashing here)."""
    recorded = dict(previous.by_path()) if previous else {}
    if record is not None:
        recorded.update(record.done)
    own_parts = set(record.parts) if record is not None else set()
    actions: list[FileAction] = []
    for f in files:
        final = req.dest / f.path
        part = part_path(req.dest, f)
        is_link = final.is_symlink()
        size = final.stat().st_size if final.is_file() and not is_link else None
        part_bytes = part.stat().st_size if part.is_file() and not part.is_symlink() else 0
        if part_bytes > f.size:
            part_bytes = 0  # cannot be a prefix of this file; discarded when fetching
        unrecorded = ""
        if is_link:
            unrecorded = "a symlink"
        elif (final.exists() or size is not None) and f.path not in recorded:
            unrecorded = "not recorded by fetch-model"
        foreign_part = part.exists() and part.name not in own_parts
        if size == f.size:
            if _recorded(recorded.get(f.path), f) and not req.verify:
                action = FileAction(f, "have")
            else:
                why = "--verify" if req.verify else "not recorded: hash before adopting"
                action = FileAction(f, "check", note=why)
        elif part_bytes:
            note = f"{part_bytes} bytes already fetched"
            if size is not None:
                note += f"; local file has wrong size {size}"
            action = FileAction(f, "resume", part_bytes, note)
        else:
            note = "" if size is None else f"local file has wrong size {size}"
            action = FileAction(f, "fetch", note=note)
        action.unrecorded, action.foreign_part = unrecorded, foreign_part
        if unrecorded and size is not None and size != f.size:
            action.unrecorded = f"{unrecorded}; {size} bytes, the hub's has {f.size}"
        actions.append(action)
    return actions


def previous_manifest(req: Request) -> tuple[Manifest | None, list[str]]:
    """The manifest already in DEST (None when absent or unusable) and notes on it."""
    notes: list[str] = []
    try:
        previous = read_manifest(req.dest)
    except ManifestUnusable as err:
        # Not trusted, not fatal: every file it would have vouched for is hashed against the
        # hub instead, and a new manifest is written: a corrupt manifest is no dead end.
        previous = None
        notes.append(
            f"{MANIFEST_NAME} is unusable ({err.why}); the files here are hashed against "
            "the hub and it is written anew"
        )
    check_repo_matches(req, previous)
    return previous, notes


def resolve_revision(req: Request, previous: Manifest | None) -> Request:
    """The revision to ask the hub for.

    The commit recorded next to the model wins over a branch name, so a re-run (or a second
    machine given the same manifest) gets identical files; --revision overrides it on purpose.
    """
    revision, source = req.revision, req.revision_source
    if previous is not None and source != "--revision":
        revision, source = previous.revision, "manifest"
    return replace(req, revision=revision, revision_source=source)


def plan_files(
    req: Request,
    hub: Hub,
    commit: str,
    files: list[RemoteFile],
    previous: Manifest | None,
    notes: list[str],
    free_bytes_of: Callable[[Path], int] = free_bytes,
) -> Plan:
    """Judge the hub's listing at ``commit`` against DEST (``req`` as resolved)."""
    record = read_record(req.dest)
    actions = plan_actions(req, files, previous, record)
    plan = Plan(
        req, hub, commit, req.revision_source, actions, free_bytes_of(req.dest), previous, record
    )
    plan.notes = notes
    survey_dest(plan)
    return plan


def survey_dest(plan: Plan) -> None:
    """Fill in what the destination holds that fetch-model did not write (see fetch_dest)."""
    dest = plan.request.dest
    if dest.exists() and not dest.is_dir():
        plan.blocked.append(f"{dest} exists and is not a folder")
    problem = staging_problem(dest)
    if problem is not None:
        plan.blocked.append(problem)
    for a in plan.actions:
        final = dest / a.file.path
        if final.is_dir() and not final.is_symlink():
            plan.blocked.append(f"{a.file.path} is a folder, where the checkpoint has a file")
    names = {a.file.path for a in plan.actions}
    if plan.previous is not None:
        names |= set(plan.previous.by_path())
    plan.unrelated = unrelated_entries(dest, names)


def dest_refusal(plan: Plan) -> TurboError | None:
    """The one line a run without --adopt-existing stops with, before writing anything."""
    dest = plan.request.dest
    if plan.blocked:
        return TurboError(
            f"fetch-model into {dest}",
            "; ".join(plan.blocked),
            "Move it away (fetch-model never deletes what it did not write), or pick "
            "another --dest.",
        )
    if plan.request.adopt_existing:
        return None
    ours = plan.record is not None or (dest / MANIFEST_NAME).exists()
    items: list[str] = []
    if not ours:
        items += plan.unrelated
    if staging_dir(dest).is_dir() and plan.record is None:
        items.append(f"{STAGING}/ (not made by fetch-model)")
    for a in plan.actions:
        if a.unrecorded and a.state != "check":
            items.append(f"{a.file.path} ({a.unrecorded})")
        if a.foreign_part:
            items.append(f"{STAGING}/{part_path(dest, a.file).name} (not recorded)")
    if not items:
        return None
    return TurboError(
        f"fetch-model into {dest}",
        f"it holds files fetch-model did not write: {listing(items)}",
        ADOPT_FIX,
    )


def check_disk(plan: Plan) -> None:
    """Fail before writing anything when the download cannot fit."""
    need = plan.need_bytes
    if need and plan.free_bytes < need:
        where = paths.nearest_existing(plan.request.dest)
        raise TurboError(
            f"fetch-model into {plan.request.dest}",
            f"not enough disk: need {need / GB:.1f} GB ({plan.download_bytes / GB:.1f} GB to "
            f"download + {plan.request.margin_bytes / GB:.1f} GB margin), "
            f"{plan.free_bytes / GB:.1f} GB free on the filesystem of {where}",
            "Free space there, or fetch to a bigger disk with --dest or MODEL=...",
        )
