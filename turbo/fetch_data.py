"""fetch-model's plain data and its staging record.

The stages of fetch-model pass these between them: what is asked (``Request``), where from
(``Hub``), what the hub holds (``RemoteFile``), what to do with each file (``FileAction``,
``Plan``) and what happened (``FetchResult``). Beside them is the staging record,
``<dest>/.turbo-fetch/record.json``: the part files and folders fetch-model made there and the
files an interrupted run finished. Like the model manifest it is a record every stage reads;
what fetch-model may replace or delete is decided from it (see fetch_dest).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turbo import contain
from turbo.errors import TurboError
from turbo.jsonfile import read_json, write_json_atomic
from turbo.manifest_data import MANIFEST_NAME, Manifest, ManifestFile

GB = 1e9
STAGING = ".turbo-fetch"
RECORD = "record.json"
WRITER = "vllm-turbo fetch-model"
ADOPT_FLAG = "--adopt-existing"
TOKEN_FIX = "set HF_TOKEN or run `hf auth login`"
SHOW = 6  # names listed in one line before "and N more"
ADOPT_FIX = (
    "Use an empty or new --dest, move them away, or pass "
    f"{ADOPT_FLAG} (checkpoint files that differ from the hub's are then replaced; "
    "other files are left alone)."
)


@dataclass
class StagingRecord:
    """What fetch-model wrote into ``<dest>/.turbo-fetch``: only these may be deleted there."""

    repo: str
    parts: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    done: dict[str, ManifestFile] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "writer": WRITER,
            "repo": self.repo,
            "parts": sorted(self.parts),
            "dirs": sorted(self.dirs),
            "done": {k: asdict(v) for k, v in sorted(self.done.items())},
        }


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


def staging_dir(dest: Path) -> Path:
    return dest / STAGING


def listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW])
    return shown + (f" and {len(names) - SHOW} more" if len(names) > SHOW else "")


def staging_problem(dest: Path) -> str | None:
    """A staging path fetch-model must never write through (a symlink, or not a folder)."""
    p = staging_dir(dest)
    if p.is_symlink():
        return (
            f"{p} is a symlink (to {p.readlink()}); fetch-model writes its parts only into "
            "a folder of its own"
        )
    if p.exists() and not p.is_dir():
        return f"{p} exists and is not a folder"
    return None


def read_record(dest: Path) -> StagingRecord | None:
    """The staging record; None when there is none, or it is not one of ours (malformed)."""
    if staging_problem(dest) is not None:
        return None
    data = read_json(staging_dir(dest) / RECORD)
    if data is None or data.get("writer") != WRITER:
        return None
    try:
        parts = [str(p) for p in data.get("parts", [])]
        dirs = [str(d) for d in data.get("dirs", [])]
        done = {str(k): ManifestFile(**v) for k, v in dict(data.get("done", {})).items()}
    except (TypeError, ValueError, AttributeError):
        return None
    # Only plain names inside the staging folder count as recorded.
    parts = [p for p in parts if contain.lexical_problem(p) is None and "/" not in p]
    dirs = [d for d in dirs if contain.lexical_problem(d) is None and "/" not in d]
    return StagingRecord(str(data.get("repo", "")), parts, dirs, done)


def write_record(dest: Path, record: StagingRecord) -> None:
    write_json_atomic(staging_dir(dest) / RECORD, record.to_json())


def part_path(dest: Path, f: RemoteFile) -> Path:
    return staging_dir(dest) / f"{f.key}.part"


def own(
    dest: Path, record: StagingRecord, *, part: str | None = None, folder: str | None = None
) -> None:
    """Record a part file or folder as ours before writing it (a crash leaves no stranger)."""
    changed = False
    if part is not None and part not in record.parts:
        record.parts.append(part)
        changed = True
    if folder is not None and folder not in record.dirs:
        record.dirs.append(folder)
        changed = True
    if changed:
        write_record(dest, record)


def unrelated_entries(dest: Path, names: set[str]) -> list[str]:
    """Top-level entries of ``dest`` that are neither checkpoint files (``names``) nor ours."""
    if not dest.is_dir():
        return []
    ours = names | {MANIFEST_NAME, STAGING}
    out = []
    for p in sorted(dest.iterdir()):
        if p.name not in ours:
            out.append(p.name + ("/" if p.is_dir() and not p.is_symlink() else ""))
    return out


def staging_strangers(dest: Path, record: StagingRecord | None) -> list[str]:
    """Entries in the staging folder that its record does not list (never touched)."""
    base = staging_dir(dest)
    if record is None or not base.is_dir() or base.is_symlink():
        return []
    known = set(record.parts) | set(record.dirs) | {RECORD}
    return sorted(f"{STAGING}/{p.name}" for p in base.iterdir() if p.name not in known)


def check_repo_matches(req: Request, previous: Manifest | None) -> None:
    if previous is not None and previous.repo != req.repo:
        raise TurboError(
            f"fetch-model into {req.dest}",
            f"that directory holds {previous.repo}, not {req.repo}",
            "Pick another --dest (or MODEL) for this variant.",
        )


def left_alone(plan: Plan, extra: list[str]) -> str | None:
    names = plan.unrelated + extra
    return f"left alone (not written by fetch-model): {listing(names)}" if names else None


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
