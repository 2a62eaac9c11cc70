"""fetch-model's report: the human summary of a result, and what --dry-run says.

Nothing here touches the network or the model directory beyond listing it: a dry run describes
the requests a real run would make and the refusal it would start with.
"""

from __future__ import annotations

from turbo import paths
from turbo.console import render_table
from turbo.errors import TurboError
from turbo.fetch_data import (
    ADOPT_FIX,
    ADOPT_FLAG,
    GB,
    STAGING,
    FetchResult,
    Hub,
    Plan,
    Request,
    hub_env_summary,
    left_alone,
    listing,
    read_record,
    result_of,
    staging_dir,
    staging_problem,
    staging_strangers,
    unrelated_entries,
    wanted,
)
from turbo.manifest_data import MANIFEST_NAME
from turbo.pins import Pins
from turbo.redact import redact


def dry_run_result(plan: Plan, refusal: TurboError | None) -> FetchResult:
    """What --dry-run says of a plan: the requests, the refusal and the disk a run would meet."""
    req = plan.request
    result = result_of(plan)
    result.notes.append(would_request(req, plan.hub, plan.commit))
    if refusal is not None:
        result.problems.append(f"would refuse: {refusal.why}. {refusal.fix}")
    vet = [a.file.path for a in plan.actions if a.state == "check" and a.unrecorded]
    if vet:
        result.notes.append(
            f"would hash before adopting (not recorded by fetch-model): {listing(vet)}; "
            f"one that differs from the hub's is refused unless {ADOPT_FLAG}"
        )
    left = left_alone(plan, staging_strangers(req.dest, plan.record))
    if left and refusal is None:
        result.notes.append(left.replace("left alone", "would leave alone", 1))
    if plan.need_bytes and plan.free_bytes < plan.need_bytes:
        result.problems.append(
            f"not enough disk: need {plan.need_bytes / GB:.1f} GB, "
            f"{plan.free_bytes / GB:.1f} GB free"
        )
    return result


def dry_run_without_hub(
    req: Request, pins: Pins, err: TurboError, free: int, hub: Hub
) -> FetchResult:
    """What --dry-run can still say when the hub is unreachable: the pinned plan (``free``:
    the bytes free where DEST would be; ``hub``: the settings it would have been asked with)."""
    size = int(pins.model.size_gb * GB) if req.repo in pins.model.variants.values() else 0
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
        hub_env=hub_env_summary(hub),
        problems=[f"hub not consulted: {err.why}", *_foreign_without_hub(req)],
        notes=[
            f"revision {req.revision!r} ({req.revision_source}), not resolved",
            would_request(req, hub, "<commit>"),
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
        f"would refuse: it holds files fetch-model did not write: {listing(items)}. {ADOPT_FIX}"
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
