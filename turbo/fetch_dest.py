"""Which files in a fetch-model destination are fetch-model's to replace or delete.

The rule: fetch-model replaces or deletes only what it recorded, or what the user allowed.
Recorded means listed in the model's ``turbo-manifest.json`` or in the staging record
``<dest>/.turbo-fetch/record.json`` (the part files it created, the folders it made, the files
an interrupted run finished). A part file is recorded *before* its first byte is written, so a
killed run leaves nothing unrecorded behind.

Everything else in the destination is someone else's:
- a file the checkpoint names (``config.json``, a shard) that is present but not recorded is
  hashed: identical to the hub's, it is kept and recorded; different, it is refused by name
  unless ``--adopt-existing`` allows replacing it;
- any other file (notes, the hub client's ``.cache/``, a folder of another tool) is never
  touched; a destination that holds such files and no record of ours is not a directory
  fetch-model made, so it is refused too unless ``--adopt-existing`` says to use it anyway.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from turbo import contain
from turbo.fetch_data import (
    ADOPT_FLAG,
    RECORD,
    STAGING,
    StagingRecord,
    read_record,
    staging_dir,
    staging_problem,
    write_record,
)


def open_staging(dest: Path, repo: str, adopt: bool) -> StagingRecord:
    """Create (or continue) the staging folder and its record, before anything is put there."""
    problem = staging_problem(dest)
    if problem is not None:  # checked at planning; re-checked right before writing
        raise contain.Escape(f"fetch-model into {dest}", problem, "Remove it and re-run.")
    record = read_record(dest)
    if record is None:
        # A folder of that name without our record is someone else's unless adopted.
        if staging_dir(dest).exists() and not adopt:
            raise contain.Escape(
                f"fetch-model into {dest}",
                f"{STAGING}/ was not made by fetch-model",
                f"Move it away, or pass {ADOPT_FLAG}.",
            )
        record = StagingRecord(repo)
    staging_dir(dest).mkdir(parents=True, exist_ok=True)
    write_record(dest, record)
    return record


def remove_stale_parts(dest: Path, record: StagingRecord, keep: set[str]) -> list[str]:
    """Delete recorded part files that no planned file will continue (an older revision's)."""
    removed: list[str] = []
    for name in sorted(set(record.parts) - keep):
        p = staging_dir(dest) / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(f"{STAGING}/{name}")
        record.parts.remove(name)
    if removed:
        write_record(dest, record)
    return removed


def close_staging(dest: Path, record: StagingRecord) -> list[str]:
    """After a complete fetch: delete what the record lists, then the folder if it is empty.
    Returns what was left there (someone else's files), relative to ``dest``."""
    base = staging_dir(dest)
    for name in record.parts:
        p = base / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    for name in record.dirs:
        p = base / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    (base / RECORD).unlink(missing_ok=True)
    left = sorted(f"{STAGING}/{p.name}" for p in base.iterdir()) if base.is_dir() else []
    if base.is_dir() and not left:
        base.rmdir()
    return left
