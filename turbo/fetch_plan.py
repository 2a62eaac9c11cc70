"""fetch-model's plan: what is asked, what the hub holds, and what to do with each file.

The plain data the fetch stages pass between them (``Request``, ``RemoteFile``, ``Hub``,
``Plan``, ``FetchResult``) lives here, with the judging that needs no network and no hashing:
per file have / check / resume / fetch from what is on disk, what the destination holds that
fetch-model did not write (see fetch_dest), and whether the download fits.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from turbo import contain, paths
from turbo.errors import TurboError
from turbo.fetch_dest import (
    ADOPT_FLAG,
    STAGING,
    StagingRecord,
    listing,
    read_record,
    staging_dir,
    staging_problem,
    unrelated_entries,
)
from turbo.manifest import MANIFEST_NAME, Manifest, ManifestFile, ManifestUnusable, read_manifest

GB = 1e9


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo at the resolved commit, as the hub lists it."""

    path: str
    size: int
    git_oid: str
    sha256: str | None = None  # LFS files only: the hub publishes sha256 for those
    xet_hash: str | None = None

    @property
    def key(self) -> str:
        """Content address: a part file can only ever continue the same bytes."""
        return self.sha256 or self.git_oid


@dataclass(frozen=True)
class Hub:
    endpoint: str
    token: str | None = field(default=None, repr=False)
    token_source: str = "none"


@dataclass(frozen=True)
class Request:
    repo: str
    dest: Path
    revision: str  # what to resolve when nothing is recorded yet
    revision_source: str  # "--revision", "pins", "lock" or "default"
    include: tuple[str, ...]
    margin_bytes: int
    verify: bool = False
    offline: bool = False
    dry_run: bool = False
    transport: str = "http"  # "http" (resumable) or "xet" (the hub client's hf_xet path)
    retries: int = 5
    backoff_s: float = 2.0
    progress: bool = True
    # Files in dest that fetch-model did not record may be replaced (and their folder used).
    adopt_existing: bool = False


@dataclass
class FileAction:
    file: RemoteFile
    state: str  # have | check | resume | fetch
    part_bytes: int = 0
    note: str = ""
    # Present at its final path but not recorded by fetch-model: someone else's until hashed
    # equal to the hub's (kept) or adopted with --adopt-existing (replaced).
    unrecorded: str = ""
    foreign_part: bool = False  # its part file exists but fetch-model did not record it
    entry: ManifestFile | None = None  # set once an unrecorded file hashed equal

    @property
    def to_download(self) -> int:
        return self.file.size - self.part_bytes if self.state in ("resume", "fetch") else 0


@dataclass
class Plan:
    request: Request
    hub: Hub
    commit: str
    revision_source: str
    actions: list[FileAction]
    free_bytes: int
    previous: Manifest | None = None
    record: StagingRecord | None = None
    unrelated: list[str] = field(default_factory=list)  # never touched; see fetch_dest
    blocked: list[str] = field(default_factory=list)  # refused even with --adopt-existing
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(a.file.size for a in self.actions)

    @property
    def weights_bytes(self) -> int:
        return sum(a.file.size for a in self.actions if a.file.path.endswith(".safetensors"))

    @property
    def download_bytes(self) -> int:
        return sum(a.to_download for a in self.actions)

    @property
    def need_bytes(self) -> int:
        return self.download_bytes + self.request.margin_bytes if self.download_bytes else 0


@dataclass
class FetchResult:
    repo: str
    revision: str
    dest: Path
    dry_run: bool
    offline: bool
    total_bytes: int
    weights_bytes: int
    download_bytes: int
    free_bytes: int | None
    files: list[dict[str, Any]]
    downloaded_bytes: int = 0
    resumed: dict[str, int] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: str = ""
    hub_env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["dest"] = str(self.dest)
        return out


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_env_summary(hub: Hub) -> dict[str, str]:
    """What --dry-run shows of the hub settings (the token only as present or not)."""
    return {
        "HF_ENDPOINT": hub.endpoint,
        "token": f"*** (from {hub.token_source})" if hub.token else "none",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", ""),
    }


def wanted(path: str, include: Iterable[str]) -> bool:
    """Top-level files matching the include patterns: vLLM reads the model dir's root only."""
    return (
        "/" not in path
        and contain.lexical_problem(path) is None
        and any(fnmatch.fnmatchcase(path, pat) for pat in include)
    )


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


def part_path(dest: Path, f: RemoteFile) -> Path:
    return staging_dir(dest) / f"{f.key}.part"


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


def check_repo_matches(req: Request, previous: Manifest | None) -> None:
    if previous is not None and previous.repo != req.repo:
        raise TurboError(
            f"fetch-model into {req.dest}",
            f"that directory holds {previous.repo}, not {req.repo}",
            "Pick another --dest (or MODEL) for this variant.",
        )


def previous_manifest(req: Request) -> tuple[Manifest | None, list[str]]:
    """The manifest already in DEST (None when absent or unusable) and notes on it."""
    notes: list[str] = []
    try:
        previous = read_manifest(req.dest)
    except ManifestUnusable as err:
        # Not trusted, not fatal: every file it would have vouched for is hashed against the
        # hub instead, and a new manifest is written (item: no dead end on a corrupt one).
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


ADOPT_FIX = (
    "Use an empty or new --dest, move them away, or pass "
    f"{ADOPT_FLAG} (checkpoint files that differ from the hub's are then replaced; "
    "other files are left alone)."
)


def left_alone(plan: Plan, extra: list[str]) -> str | None:
    names = plan.unrelated + extra
    return f"left alone (not written by fetch-model): {listing(names)}" if names else None


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


def file_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "path": a.file.path,
            "size": a.file.size,
            "state": a.state,
            "to_download": a.to_download,
            "sha256": a.file.sha256 or "",
            "note": a.note,
        }
        for a in plan.actions
    ]


def result_of(plan: Plan) -> FetchResult:
    req = plan.request
    return FetchResult(
        repo=req.repo,
        revision=plan.commit,
        dest=req.dest,
        dry_run=req.dry_run,
        offline=False,
        total_bytes=plan.total_bytes,
        weights_bytes=plan.weights_bytes,
        download_bytes=plan.download_bytes,
        free_bytes=plan.free_bytes,
        files=file_rows(plan),
        hub_env=hub_env_summary(plan.hub),
        notes=[
            f"revision {req.revision!r} ({plan.revision_source}) -> commit {plan.commit}",
            *plan.notes,
        ],
    )
