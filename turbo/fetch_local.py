"""fetch-model's view of a local copy against its manifest, without the network.

``check_offline`` is --offline (and HF_HUB_OFFLINE): sizes, with --verify hashes.
``complete_locally`` is the run that need not ask the hub: a complete copy, sizes checked.
"""

from __future__ import annotations

from turbo.errors import TurboError
from turbo.fetch_data import FetchResult, Request, check_repo_matches, read_record, wanted
from turbo.manifest import check_local, hash_problems, manifest_path, read_manifest


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
