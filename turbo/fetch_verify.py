"""fetch-model's hash checks: is a file on disk exactly the one the hub lists?

Files the hub publishes with an LFS sha256 are compared by it; small files by git's blob id,
the only hash the hub gives for them. A file in DEST that fetch-model did not record is
hashed before anything is written: equal to the hub's it is kept, different it is replaced
only with --adopt-existing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# Hashing is looked up on the manifest module at call time, so a test that forbids hashing
# there (tests/test_fetch_offline.py) sees every hash this module would take.
from turbo import manifest as manifest_mod
from turbo.errors import TurboError
from turbo.fetch_data import (
    ADOPT_FIX,
    ADOPT_FLAG,
    FetchResult,
    FileAction,
    Plan,
    RemoteFile,
    listing,
)
from turbo.manifest import INDEX_NAME, ManifestFile, index_shards


def identity(f: RemoteFile, path: Path, sha256: str | None = None) -> tuple[bool, ManifestFile]:
    """Hash ``path`` and say whether it is exactly ``f`` (sha256 for LFS, git blob id else)."""
    digest = sha256 or manifest_mod.sha256_file(path)
    oid = f.git_oid if f.sha256 else manifest_mod.git_blob_oid(path)
    ok = path.stat().st_size == f.size and (digest == f.sha256 if f.sha256 else oid == f.git_oid)
    return ok, ManifestFile(f.path, f.size, digest, oid)


def vet_unrecorded(plan: Plan, log: Callable[[str], None], result: FetchResult) -> None:
    """Hash every right-sized file fetch-model did not record, before anything is written:
    equal to the hub's, it is kept; different, it is replaced only with --adopt-existing."""
    differ: list[FileAction] = []
    for a in plan.actions:
        if a.state != "check" or not a.unrecorded:
            continue
        ok, entry = identity(a.file, plan.request.dest / a.file.path)
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


def check_index(dest: Path, files: list[RemoteFile]) -> None:
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
