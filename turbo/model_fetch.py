"""fetch-model: download the pinned NVFP4 checkpoint once, verified and resumable.

huggingface_hub answers the metadata questions (which commit, which files, their sizes and
hashes, is the repo gated) through its public API. The bytes are fetched here with plain ranged
GETs into a stable, content-addressed ``<dest>/.turbo-fetch/<hash>.part``: the hub client writes
each download to a process-unique ``*.incomplete`` file, so a killed or crashed run of it starts
every unfinished shard over and leaves the partial file behind. A run of ours picks the part up
where it stopped, checks its hash, and only then moves it into place. The manifest is written
last, so its presence means the copy is complete.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from turbo import contain, paths
from turbo.console import redact, render_table, strip_url_credentials
from turbo.errors import TurboError, UsageError
from turbo.fetch_dest import (
    ADOPT_FLAG,
    STAGING,
    StagingRecord,
    close_staging,
    listing,
    open_staging,
    own,
    read_record,
    remove_stale_parts,
    staging_dir,
    staging_problem,
    staging_strangers,
    unrelated_entries,
    write_record,
)
from turbo.jsonfile import write_json_atomic
from turbo.manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    ManifestUnusable,
    check_local,
    git_blob_oid,
    hash_problems,
    index_shards,
    manifest_path,
    read_manifest,
    sha256_file,
    write_manifest,
)
from turbo.pins import Pins

LOCK_FILE = "model-lock.json"
CHUNK = 1 << 20
GB = 1e9
TOKEN_FIX = "set HF_TOKEN or run `hf auth login`"


class HubUnreachable(TurboError):
    """The hub could not be reached at all (DNS, connection, timeout): --dry-run can still
    show the pinned plan."""


# --------------------------------------------------------------------------- plain data
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


# --------------------------------------------------------------------------- environment
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def offline_from_env() -> bool:
    """HF_HUB_OFFLINE, read now: the hub client reads it once at import, too early for us."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hub_from_env() -> Hub:
    """Endpoint and token, read at call time.

    huggingface_hub freezes ``HF_ENDPOINT`` into ``constants.ENDPOINT`` when it is first
    imported; reading the variable here and passing ``endpoint=`` explicitly makes a later
    change (a test server, a mirror) take effect.
    """
    from huggingface_hub import constants

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return Hub(endpoint, value, var)
    from huggingface_hub import get_token

    token = get_token()
    return Hub(endpoint, token, "hf auth login") if token else Hub(endpoint)


def hub_env_summary(hub: Hub) -> dict[str, str]:
    """What --dry-run shows of the hub settings (the token only as present or not)."""
    return {
        "HF_ENDPOINT": hub.endpoint,
        "token": f"*** (from {hub.token_source})" if hub.token else "none",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", ""),
    }


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``. Tests patch this."""
    return shutil.disk_usage(paths.nearest_existing(path)).free


def lock_path() -> Path:
    return paths.state_dir() / LOCK_FILE


def read_lock() -> dict[str, Any]:
    try:
        data = json.loads(lock_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- request
def build_request(
    pins: Pins,
    *,
    dest: str | None = None,
    variant: str | None = None,
    revision: str | None = None,
    verify: bool = False,
    offline: bool = False,
    dry_run: bool = False,
    transport: str = "http",
    progress: bool = True,
    adopt_existing: bool = False,
) -> Request:
    """Turn CLI options plus pins into a request; every default comes from the pins file."""
    m = pins.model
    if variant:
        if variant not in m.variants:
            raise UsageError(
                "--variant",
                f"unknown variant {variant!r}",
                f"Choose one of: {', '.join(sorted(m.variants))}.",
            )
        repo = m.variants[variant]
    else:
        repo = m.repo
    if transport not in ("http", "xet"):
        raise UsageError("--transport", f"unknown transport {transport!r}", "Use http or xet.")
    if dest:
        target = Path(dest).expanduser()
    elif os.environ.get("MODEL"):
        target = paths.model_dir(pins)
    elif repo == m.repo:
        target = Path(m.path)
    else:
        # Other variants sit beside the pinned one, named as on the hub.
        target = Path(m.path).parent / repo.split("/")[-1]
    lock = read_lock().get(repo)
    if revision:
        rev, source = revision, "--revision"
    elif isinstance(lock, dict) and lock.get("revision"):
        rev, source = str(lock["revision"]), "lock"
    elif repo == m.repo:
        rev, source = m.revision, "pins"
    else:
        rev, source = "main", "default"
    return Request(
        repo=repo,
        dest=target.absolute(),
        revision=rev,
        revision_source=source,
        include=tuple(m.include),
        margin_bytes=int(m.disk_margin_gb * GB),
        verify=verify,
        offline=offline or offline_from_env(),
        dry_run=dry_run,
        transport=transport,
        progress=progress,
        adopt_existing=adopt_existing,
    )


# --------------------------------------------------------------------------- hub errors
def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _is_network_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectError",
            "ConnectionError",
            "NetworkError",
            "TimeoutException",
            "Timeout",
            "TransportError",
            "ProtocolError",
        }
    )


def hub_error(exc: BaseException, req: Request, hub: Hub, revision: str) -> TurboError:
    """One actionable line for a failure of the hub client (the token never appears)."""
    from huggingface_hub import errors as hf

    what = f"fetch-model {req.repo}"
    status = _status(exc)
    if isinstance(exc, hf.GatedRepoError):
        if hub.token is None:
            err = TurboError(
                what,
                f"the repo is gated and no Hugging Face token was found (HTTP {status or 401})",
                f"Accept the model's terms on its hub page, then {TOKEN_FIX}.",
            )
        else:
            err = TurboError(
                what,
                f"the repo is gated and the token from {hub.token_source} "
                f"has no access (HTTP {status or 403})",
                "Accept the terms with the account that owns the token, or use "
                f"another token: {TOKEN_FIX}.",
            )
    elif isinstance(exc, hf.RevisionNotFoundError):
        err = TurboError(
            what,
            f"revision {revision!r} does not exist (HTTP {status or 404})",
            "Pass an existing branch, tag or commit with --revision, or fix "
            "[model].revision in turbo/data/pins.toml.",
        )
    elif isinstance(exc, hf.RepositoryNotFoundError):
        who = "no token was sent" if hub.token is None else f"token from {hub.token_source}"
        err = TurboError(
            what,
            f"repository not found, or private ({who}; HTTP {status})",
            f"Check the repo name (--variant, pins [model]); if it is private, {TOKEN_FIX}.",
        )
    elif isinstance(exc, hf.OfflineModeIsEnabled):
        err = TurboError(
            what,
            "the hub client is in offline mode (HF_HUB_OFFLINE was set when it was imported)",
            "Unset HF_HUB_OFFLINE, or pass --offline to check the local copy only.",
        )
    elif isinstance(exc, hf.HfHubHTTPError):
        err = TurboError(
            what,
            f"the hub at {hub.endpoint} answered HTTP {status}",
            "Retry later; re-running resumes where it stopped.",
        )
    elif _is_network_error(exc):
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return HubUnreachable(
            what,
            redact(f"cannot reach {hub.endpoint} ({reason})"),
            "Check the network or proxy (HF_ENDPOINT, HTTPS_PROXY) and re-run: it resumes. "
            "A complete copy needs no network; this one is not complete yet.",
        )
    else:
        return TurboError(
            what,
            redact(f"unexpected hub client error {exc!r}"),
            "Re-run; if it repeats, report it with the log file.",
        )
    return TurboError(redact(err.what), redact(err.why), err.fix)


# --------------------------------------------------------------------------- planning
def wanted(path: str, include: Iterable[str]) -> bool:
    """Top-level files matching the include patterns: vLLM reads the model dir's root only."""
    return (
        "/" not in path
        and contain.lexical_problem(path) is None
        and any(fnmatch.fnmatchcase(path, pat) for pat in include)
    )


_HEX = {"git_oid": re.compile(r"[0-9a-f]{40}"), "sha256": re.compile(r"[0-9a-f]{64}")}


def _checked(f: RemoteFile, req: Request) -> RemoteFile:
    """A listing is data from the network: its hashes name part files on disk
    (``.turbo-fetch/<hash>.part``), so anything but plain hex is refused."""
    for name, pattern in _HEX.items():
        value = getattr(f, name)
        if value is not None and not pattern.fullmatch(value):
            raise TurboError(
                f"fetch-model {req.repo}",
                f"the hub listed {f.path} with a malformed {name} {value[:80]!r}; nothing "
                "was written",
                "Check HF_ENDPOINT: a mirror or proxy is answering with something that is "
                "not the Hugging Face API.",
            )
    if f.size < 0:
        raise TurboError(
            f"fetch-model {req.repo}",
            f"the hub listed {f.path} with size {f.size}",
            "Check HF_ENDPOINT.",
        )
    return f


def _fetch_order(f: RemoteFile) -> tuple[bool, str]:
    # Small files first: the index and configs are checked before gigabytes move.
    return (f.path.endswith(".safetensors"), f.path)


def list_remote(req: Request, hub: Hub) -> tuple[str, list[RemoteFile]]:
    """Resolve the revision to a commit and list the files to fetch, with sizes and hashes."""
    from huggingface_hub.hf_api import HfApi, RepoFile

    api = HfApi(endpoint=hub.endpoint, token=hub.token or False)
    revision = req.revision
    try:
        info = api.model_info(req.repo, revision=revision, token=hub.token or False)
        commit = str(info.sha or "")
        if not commit:
            raise TurboError(
                f"fetch-model {req.repo}",
                f"the hub gave no commit for {revision!r}",
                "Pass a commit hash with --revision.",
            )
        files: list[RemoteFile] = []
        for item in api.list_repo_tree(
            req.repo, revision=commit, recursive=True, token=hub.token or False
        ):
            if not isinstance(item, RepoFile) or not wanted(item.path, req.include):
                continue
            lfs = item.lfs
            remote = RemoteFile(
                path=item.path,
                size=int(lfs.size if lfs is not None else item.size),
                git_oid=str(item.blob_id),
                sha256=str(lfs.sha256) if lfs is not None else None,
                xet_hash=getattr(item, "xet_hash", None),
            )
            files.append(_checked(remote, req))
    except TurboError:
        raise
    except Exception as exc:
        raise hub_error(exc, req, hub, revision) from exc
    if not any(f.path.endswith(".safetensors") for f in files):
        raise TurboError(
            f"fetch-model {req.repo}@{commit[:12]}",
            "the repo has no *.safetensors weights at its top level",
            "Check the repo and revision in pins.",
        )
    return commit, sorted(files, key=_fetch_order)


def probe_access(req: Request, hub: Hub, commit: str, f: RemoteFile) -> None:
    """HEAD one file the way the hub client does: surfaces gating (401/403) before any write."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(req.repo, f.path, revision=commit, endpoint=hub.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hub.token or False, endpoint=hub.endpoint)
    except Exception as exc:
        raise hub_error(exc, req, hub, commit) from exc
    if meta.commit_hash and meta.commit_hash != commit:
        raise TurboError(
            f"fetch-model {req.repo}",
            f"the hub served {f.path} from commit {meta.commit_hash[:12]}, not {commit[:12]}",
            "Re-run.",
        )


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


def make_plan(req: Request, hub: Hub) -> Plan:
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
    # The commit recorded next to the model wins over a branch name, so a re-run (or a second
    # machine given the same manifest) gets identical files; --revision overrides it on purpose.
    revision, source = req.revision, req.revision_source
    if previous is not None and source != "--revision":
        revision, source = previous.revision, "manifest"
    resolved = replace(req, revision=revision, revision_source=source)
    commit, files = list_remote(resolved, hub)
    probe_access(resolved, hub, commit, files[0])
    record = read_record(req.dest)
    actions = plan_actions(resolved, files, previous, record)
    plan = Plan(resolved, hub, commit, source, actions, free_bytes(req.dest), previous, record)
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
        _ADOPT_FIX,
    )


_ADOPT_FIX = (
    "Use an empty or new --dest, move them away, or pass "
    f"{ADOPT_FLAG} (checkpoint files that differ from the hub's are then replaced; "
    "other files are left alone)."
)


def _left_alone(plan: Plan, extra: list[str]) -> str | None:
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


# --------------------------------------------------------------------------- downloading
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
    part = part_path(req.dest, f)
    if plan.record is not None:
        own(req.dest, plan.record, part=part.name)  # recorded before its first byte
    url = hf_hub_url(req.repo, f.path, revision=plan.commit, endpoint=hub.endpoint)
    base_headers = dict(build_hf_headers(token=hub.token or False))
    base_headers["Accept-Encoding"] = "identity"
    have = part.stat().st_size if part.is_file() else 0
    if have > f.size:
        part.unlink()
        have = 0
    hasher = hashlib.sha256()
    if have:
        with part.open("rb") as fh:
            while block := fh.read(CHUNK * 8):
                hasher.update(block)
        log(f"resume {f.path} from byte {have} of {f.size}")
    counts = _Transfer(resumed_from=have)
    bar = _Progress(req.progress, f.size, f.path, have)
    failures = 0
    try:
        while have < f.size:
            headers = dict(base_headers)
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with session.get(
                    url, headers=headers, stream=True, timeout=(15, 60), allow_redirects=True
                ) as r:
                    if r.status_code in (401, 403, 404):
                        raise TurboError(
                            f"fetch-model {req.repo}",
                            f"{f.path}: the hub answered HTTP {r.status_code} during the download",
                            f"Check access ({TOKEN_FIX}) and re-run; it resumes.",
                        )
                    if r.status_code == 416 or (r.status_code >= 500 or r.status_code == 429):
                        if r.status_code == 416:
                            part.unlink(missing_ok=True)
                            have, hasher = 0, hashlib.sha256()
                            bar.reset()
                        raise requests.ConnectionError(f"HTTP {r.status_code}")
                    if have and r.status_code == 200:
                        # The server ignored the Range header: start this file over.
                        log(f"{f.path}: server ignored Range; restarting the file")
                        have, hasher = 0, hashlib.sha256()
                        bar.reset()
                    elif have and _content_range_start(r.headers.get("Content-Range")) != have:
                        part.unlink(missing_ok=True)
                        have, hasher = 0, hashlib.sha256()
                        bar.reset()
                        raise requests.ConnectionError("unexpected Content-Range")
                    r.raise_for_status()
                    with part.open("r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        for chunk in r.iter_content(chunk_size=CHUNK):
                            if not chunk:
                                continue
                            out.write(chunk)
                            hasher.update(chunk)
                            have += len(chunk)
                            counts.sent += len(chunk)
                            bar.update(len(chunk))
                            failures = 0  # progress made: the retry budget starts again
                            if have > f.size:
                                break
                        out.flush()
                        os.fsync(out.fileno())
                if have > f.size:
                    part.unlink(missing_ok=True)
                    have, hasher = 0, hashlib.sha256()
                    raise requests.ConnectionError("server sent more bytes than the file has")
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                failures += 1
                log(
                    f"{f.path}: interrupted at byte {have} of {f.size} ({exc.__class__.__name__}"
                    f"), attempt {failures} of {req.retries}"
                )
                if failures > req.retries:
                    raise TurboError(
                        f"download of {f.path}",
                        f"interrupted at byte {have} of {f.size} after {req.retries} retries "
                        f"({redact(str(exc))[:120]})",
                        "Re-run the same command: it resumes from there.",
                    ) from exc
                time.sleep(min(req.backoff_s * 2 ** (failures - 1), 60.0))
    finally:
        bar.close()
    return part, hasher.hexdigest(), counts


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
    return part, sha256_file(part)


def xet_usable(f: RemoteFile) -> bool:
    # Same rule as the hub client (hf_xet installed, HF_HUB_DISABLE_XET unset), read now.
    import importlib.util

    return (
        bool(f.xet_hash)
        and not _truthy(os.environ.get("HF_HUB_DISABLE_XET"))
        and importlib.util.find_spec("hf_xet") is not None
    )


def _identity(f: RemoteFile, path: Path, sha256: str | None = None) -> tuple[bool, ManifestFile]:
    """Hash ``path`` and say whether it is exactly ``f`` (sha256 for LFS, git blob id else)."""
    digest = sha256 or sha256_file(path)
    oid = f.git_oid if f.sha256 else git_blob_oid(path)
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
            _ADOPT_FIX,
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
    result = _result(plan)
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
    left = _left_alone(plan, close_staging(req.dest, record))
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


# --------------------------------------------------------------------------- entry points
def _file_rows(plan: Plan) -> list[dict[str, Any]]:
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


def _result(plan: Plan) -> FetchResult:
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
        files=_file_rows(plan),
        hub_env=hub_env_summary(plan.hub),
        notes=[
            f"revision {req.revision!r} ({plan.revision_source}) -> commit {plan.commit}",
            *plan.notes,
        ],
    )


def check_offline(req: Request) -> FetchResult:
    """Offline: compare the local copy with its manifest; never touch the network."""
    manifest = read_manifest(req.dest)
    if manifest is None:
        raise TurboError(
            f"offline check of {req.dest}",
            "there is no manifest (the model was "
            "never completely fetched here) and offline mode forbids the network",
            "Fetch once with network access (unset HF_HUB_OFFLINE), or copy a "
            "fetched model directory with its turbo-manifest.json here.",
        )
    if manifest.repo != req.repo:
        check_repo_matches(req, manifest)
    problems = check_local(req.dest, manifest)
    if req.verify:
        problems += hash_problems(req.dest, manifest)
    result = FetchResult(
        repo=manifest.repo,
        revision=manifest.revision,
        dest=req.dest,
        dry_run=req.dry_run,
        offline=True,
        total_bytes=manifest.total_bytes,
        weights_bytes=manifest.weights_bytes,
        download_bytes=0,
        free_bytes=None,
        problems=problems,
        manifest=str(manifest_path(req.dest)),
        files=[{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        notes=[
            "offline: checked against the manifest"
            + (" with hashes" if req.verify else " (sizes; add --verify for hashes)")
        ],
    )
    if problems and not req.dry_run:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise TurboError(
            f"offline check of {req.dest}",
            f"{len(problems)} problem(s): {'; '.join(problems[:3])}{more}",
            "Run fetch-model with network access (unset HF_HUB_OFFLINE) to "
            "fetch what is missing; complete files are kept.",
        )
    return result


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
        result = _result(plan)
        result.notes.append(would_request(req, h, plan.commit))
        if refusal is not None:
            result.problems.append(f"would refuse: {refusal.why}. {refusal.fix}")
        vet = [a.file.path for a in plan.actions if a.state == "check" and a.unrecorded]
        if vet:
            result.notes.append(
                f"would hash before adopting (not recorded by fetch-model): {listing(vet)}; "
                f"one that differs from the hub's is refused unless {ADOPT_FLAG}"
            )
        left = _left_alone(plan, staging_strangers(req.dest, plan.record))
        if left and refusal is None:
            result.notes.append(left.replace("left alone", "would leave alone", 1))
        if plan.need_bytes and plan.free_bytes < plan.need_bytes:
            result.problems.append(
                f"not enough disk: need {plan.need_bytes / GB:.1f} GB, "
                f"{plan.free_bytes / GB:.1f} GB free"
            )
        return result
    if refusal is not None:
        raise refusal
    check_disk(plan)
    return execute(plan, log)


def complete_locally(req: Request) -> FetchResult | None:
    """A complete, manifest-checked copy needs no network: sizes against the manifest, a
    stat per file (no hashing), and the hub is not asked. None when the hub must be asked:
    --verify, another --revision, other include patterns than those recorded, an unusable
    manifest, an unfinished run (a staging record), or anything missing or wrong-sized."""
    if req.verify:
        return None
    try:
        m = read_manifest(req.dest)
    except TurboError:
        return None  # make_plan says why (or rebuilds it)
    if m is None or m.repo != req.repo or read_record(req.dest) is not None:
        return None
    if req.revision_source == "--revision" and req.revision != m.revision:
        return None
    recorded = m.extra.get("include")
    if recorded is not None and list(recorded) != list(req.include):
        return None
    if not all(wanted(f.path, req.include) for f in m.files):
        return None
    try:
        if check_local(req.dest, m):
            return None
    except TurboError:
        return None  # a manifest entry leading out of the dir: planning refuses it
    return FetchResult(
        repo=m.repo,
        revision=m.revision,
        dest=req.dest,
        dry_run=req.dry_run,
        offline=False,
        total_bytes=m.total_bytes,
        weights_bytes=m.weights_bytes,
        download_bytes=0,
        free_bytes=None,
        files=[{"path": f.path, "size": f.size, "state": "have"} for f in m.files],
        manifest=str(manifest_path(req.dest)),
        notes=[
            "complete per its manifest (every file at its recorded size); hub not asked. "
            "--verify re-hashes every file against the hub"
        ],
    )


def dry_run_without_hub(req: Request, pins: Pins, err: TurboError) -> FetchResult:
    """What --dry-run can still say when the hub is unreachable: the pinned plan."""
    size = int(pins.model.size_gb * GB) if req.repo in pins.model.variants.values() else 0
    free = free_bytes(req.dest)
    return FetchResult(
        repo=req.repo,
        revision=req.revision,
        dest=req.dest,
        dry_run=True,
        offline=False,
        total_bytes=size,
        weights_bytes=size,
        download_bytes=size,
        free_bytes=free,
        files=[{"path": pat, "size": None, "state": "pattern"} for pat in req.include],
        hub_env=hub_env_summary(hub_from_env()),
        problems=[f"hub not consulted: {err.why}", *_foreign_without_hub(req)],
        notes=[
            f"revision {req.revision!r} ({req.revision_source}), not resolved",
            would_request(req, hub_from_env(), "<commit>"),
            f"sizes from pins (~{pins.model.size_gb:g} GB); need "
            f"{(size + req.margin_bytes) / GB:.1f} GB with margin, "
            f"{free / GB:.1f} GB free at {paths.nearest_existing(req.dest)}",
        ],
    )


def _foreign_without_hub(req: Request) -> list[str]:
    """The refusal a real run would start with, judged without the hub's file list: files in
    a DEST that fetch-model did not make (names matching the include patterns aside)."""
    dest = req.dest
    if req.adopt_existing or not dest.is_dir():
        return []
    problem = staging_problem(dest)
    if problem is not None:
        return [f"would refuse: {problem}"]
    record = read_record(dest)
    if record is not None or (dest / MANIFEST_NAME).exists():
        return []
    names = {p.name for p in dest.iterdir() if wanted(p.name, req.include)}
    items = unrelated_entries(dest, names)
    if staging_dir(dest).is_dir():
        items.append(f"{STAGING}/ (not made by fetch-model)")
    if not items:
        return []
    return [
        f"would refuse: it holds files fetch-model did not write: {listing(items)}. {_ADOPT_FIX}"
    ]


def would_request(req: Request, hub: Hub, commit: str) -> str:
    """The HTTP requests a real run makes, for --dry-run (no subprocess is involved)."""
    return (
        f"would request: GET {hub.endpoint}/api/models/{req.repo}/revision/{req.revision}; "
        f"GET .../tree/{commit}?recursive=true; per file HEAD + GET {hub.endpoint}/"
        f"{req.repo}/resolve/{commit}/<file> (Range: bytes=N- when resuming) into "
        f"{req.dest / STAGING}/<hash>.part, hash-checked, then moved into place"
    )


def render(result: FetchResult) -> str:
    """The human summary (the JSON form is ``result.to_json()``)."""
    head = "fetch-model (dry run: nothing written)" if result.dry_run else "fetch-model"
    if result.offline:
        head += " offline"
    lines = [
        head,
        f"  repo           {result.repo}",
        f"  revision       {result.revision}",
        f"  dest           {result.dest}",
    ]
    for k, v in result.hub_env.items():
        lines.append(f"  {k:<14} {v or '(unset)'}")
    rows = []
    for f in result.files:
        size = f.get("size")
        rows.append(
            (
                f["path"],
                "?" if size is None else f"{size:,}",
                f.get("state", "ok"),
                f.get("note", ""),
            )
        )
    lines += ["", render_table(["file", "bytes", "state", "note"], rows), ""]
    lines.append(
        f"total {result.total_bytes / GB:.2f} GB (weights {result.weights_bytes / GB:.2f}"
        f" GB); to download {result.download_bytes / GB:.2f} GB"
    )
    if result.free_bytes is not None:
        lines.append(f"free disk {result.free_bytes / GB:.1f} GB")
    if not result.dry_run and not result.offline:
        lines.append(f"downloaded {result.downloaded_bytes:,} bytes this run")
    for path, start in result.resumed.items():
        lines.append(f"resumed {path} from byte {start:,}")
    lines += [f"re-fetched (bad hash): {p}" for p in result.repaired]
    lines += [f"removed leftover: {p}" for p in result.cleaned]
    lines += [f"note: {n}" for n in result.notes]
    lines += [f"problem: {p}" for p in result.problems]
    if result.manifest:
        lines.append(f"manifest {result.manifest}")
    return redact("\n".join(lines))


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
