"""The model manifest: what was fetched, from which commit, with which sizes and hashes.

``<model_dir>/turbo-manifest.json`` is the contract between ``fetch-model`` (which writes it)
and ``serve`` / ``doctor`` (which read it). It is written last and atomically, so its presence
means every file it lists was downloaded completely and its hash checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from turbo import contain
from turbo.errors import TurboError
from turbo.jsonfile import write_json_atomic
from turbo.manifest_data import INDEX_NAME as INDEX_NAME
from turbo.manifest_data import MANIFEST_NAME as MANIFEST_NAME
from turbo.manifest_data import SCHEMA_VERSION as SCHEMA_VERSION
from turbo.manifest_data import Manifest as Manifest
from turbo.manifest_data import ManifestFile as ManifestFile

HASH_BLOCK = 8 * 1024 * 1024


def manifest_path(model_dir: Path) -> Path:
    return model_dir / MANIFEST_NAME


class ManifestUnusable(TurboError):
    """The manifest exists but cannot be trusted (unreadable, malformed, or naming paths
    outside its model directory). fetch-model rebuilds it by hashing the files against the
    hub; every other reader stops with this line."""


def rebuild_fix(model_dir: Path) -> str:
    return (
        f"Run `invoke fetch-model --dest {model_dir}` with network access: it hashes the "
        "files there against the hub and writes a new manifest (matching files are not "
        "downloaded again)."
    )


def _bad(path: Path, why: str) -> ManifestUnusable:
    return ManifestUnusable(f"model manifest {path}", why, rebuild_fix(path.parent))


def model_file(model_dir: Path, rel: str) -> Path:
    """Where a manifest entry lives: inside ``model_dir``, symlinks followed, or refused."""
    path = manifest_path(model_dir)
    return contain.inside(
        model_dir,
        rel,
        source=f"model manifest {path}",
        fix="The manifest was edited or the model dir holds a link out of it. "
        + rebuild_fix(model_dir),
    )


def parse_manifest(data: Any, source: Path) -> Manifest:
    if not isinstance(data, dict):
        raise _bad(source, "is not a JSON object")
    try:
        files = tuple(
            ManifestFile(
                path=str(f["path"]),
                size=int(f["size"]),
                sha256=str(f["sha256"]),
                git_oid=str(f.get("git_oid", "")),
            )
            for f in data["files"]
        )
        for f in files:
            why = contain.lexical_problem(f.path)
            if why is not None:
                raise _bad(source, f"names {f.path!r}, which {why}; nothing was touched")
        return Manifest(
            repo=str(data["repo"]),
            revision=str(data["revision"]),
            files=files,
            fetched_at=str(data["fetched_at"]),
            requested_revision=str(data.get("requested_revision", "")),
            endpoint=str(data.get("endpoint", "")),
            schema=int(data.get("schema", SCHEMA_VERSION)),
            extra=dict(data.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(source, f"is missing or has malformed fields ({exc!r})") from exc


def read_manifest(model_dir: Path) -> Manifest | None:
    """The manifest in ``model_dir``; None when there is none (never fetched, or not finished)."""
    path = manifest_path(model_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"is not valid JSON ({exc.msg})") from exc
    return parse_manifest(data, path)


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = manifest_path(model_dir)
    write_json_atomic(path, manifest.to_json())
    return path


def index_shards(model_dir: Path) -> list[str] | None:
    """Shard names in ``model.safetensors.index.json``; None when the index is absent."""
    index = model_dir / INDEX_NAME
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        return sorted({str(v) for v in weight_map.values()})
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        # An unreadable index is reported as a problem by check_local, not raised here.
        return []


def size_problems(model_dir: Path, files: Iterable[ManifestFile]) -> list[str]:
    """Missing or wrong-sized files, one line each."""
    problems: list[str] = []
    for f in files:
        p = model_file(model_dir, f.path)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            problems.append(f"missing: {f.path} ({f.size} bytes)")
            continue
        if size < f.size:
            problems.append(f"truncated: {f.path} ({size} of {f.size} bytes)")
        elif size > f.size:
            problems.append(f"wrong size: {f.path} ({size} bytes, expected {f.size})")
    return problems


def check_local(model_dir: Path, manifest: Manifest | None = None) -> list[str]:
    """Problems with the local copy (missing or truncated files, shards the index names but the
    manifest lacks); empty when complete. Sizes only: cheap enough for serve and doctor."""
    m = manifest if manifest is not None else read_manifest(model_dir)
    if m is None:
        return [f"no manifest: {manifest_path(model_dir)} (the model was never fully fetched)"]
    problems = size_problems(model_dir, m.files)
    known = m.by_path()
    shards = index_shards(model_dir)
    if shards == []:
        problems.append(f"unreadable: {INDEX_NAME} (no weight_map)")
    for shard in shards or []:
        if shard not in known:
            problems.append(f"not in manifest: {shard} (named by {INDEX_NAME})")
    return problems


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def git_blob_oid(path: Path) -> str:
    """Git's blob id (sha1 over ``blob <size>\\0`` + content), the hub's hash for small files."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def hash_problems(
    model_dir: Path, manifest: Manifest, progress: Callable[[int], None] | None = None
) -> list[str]:
    """Re-hash every present, right-sized file against the manifest's sha256."""
    problems: list[str] = []
    for f in manifest.files:
        p = model_file(model_dir, f.path)
        if not p.is_file() or p.stat().st_size != f.size:
            continue
        if sha256_file(p, progress) != f.sha256:
            problems.append(f"corrupt: {f.path} (sha256 differs from the manifest)")
    return problems
