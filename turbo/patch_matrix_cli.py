"""``invoke patches.matrix``: plan the downloads, say how much, evaluate, render, write the doc.

The command composes the pieces: which releases (the index or the cache, through
``turbo.sdist``), their archives, the evaluation (``turbo.patch_matrix``) and the renderings
(``turbo.patch_matrix_render``). Progress and the download plan go to ``say`` (stderr, and the
task's log file) so that ``--json`` keeps stdout machine-readable.
"""

from __future__ import annotations

import os
from pathlib import Path

from turbo import patch_matrix, patch_matrix_render, sdist
from turbo.console import TaskLog
from turbo.errors import TurboError, UsageError
from turbo.outcome import Outcome, done
from turbo.patch_matrix_data import Say
from turbo.pins import load_pins
from turbo.releases import release_key


def _split(versions: str) -> list[str]:
    return [v.strip() for v in versions.split(",") if v.strip()]


def check_doc_target(path: Path) -> None:
    """Refuse, before any work, to replace a file this task did not write."""
    if path.is_file():
        head = path.read_text(encoding="utf-8", errors="replace")[
            : len(patch_matrix_render.DOC_HEAD)
        ]
        if head != patch_matrix_render.DOC_HEAD:
            raise TurboError(
                f"--doc {path}",
                "the file exists and was not written by patches.matrix",
                "Name a new file or the generated docs/patch-matrix.md.",
            )


def write_doc(path: Path, text: str) -> None:
    """Write the report atomically (temporary file beside it, then rename)."""
    check_doc_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolve_versions(
    versions: list[str] | None, floor: str, say: Say | None = None
) -> tuple[list[str], dict[str, sdist.SdistFile] | None]:
    """The releases to evaluate: those named, or every final release from ``floor`` on; and
    the index's listing when it was read (so the download plan needs no second request).

    Named releases need no network here. For "all", the index is asked for its list (one
    request); when it cannot be reached the releases already cached are used, with a warning.
    """
    if versions:
        bad = [v for v in versions if release_key(v) is None]
        if bad:
            raise TurboError(
                f"--versions {','.join(versions)}",
                f"{', '.join(bad)} is not a final release number",
                "Name releases such as 0.16.0,0.17.0 (pre-releases are not evaluated).",
            )
        return versions, None
    try:
        listing = dict(sdist.list_releases(minimum=floor))
        return list(listing), listing
    except TurboError as err:
        key = release_key(floor) or ()
        have = [
            p.name[len(sdist.PROJECT) + 1 : -len(".tar.gz")]
            for p in sdist.sdist_dir().glob(f"{sdist.PROJECT}-*.tar.gz")
        ]
        cached = sorted(
            (v for v in have if (k := release_key(v)) is not None and k >= key),
            key=lambda v: release_key(v) or (),
        )
        if not cached:
            raise
        if say:
            say(f"warning: {err.line()} Using the {len(cached)} cached release(s) instead.")
        return cached, None


def run(*, versions: str, every: bool, doc: str, dry_run: bool, say: Say) -> Outcome:
    """The matrix for the named releases (or every one from the pinned sdist version on): the
    table as text and the whole matrix as data; the doc written when asked. ``say`` gets the
    progress, which also goes to the task's log file."""
    if versions and every:
        raise UsageError("patches.matrix", "--versions and --all exclude each other", "Pick one.")
    if doc:
        check_doc_target(Path(doc))
    with TaskLog("patches-matrix") as log:

        def tell(line: str) -> None:
            say(line)
            log.write(line)

        floor = load_pins().vllm.sdist_version
        wanted, listing = resolve_versions(_split(versions) or None, floor, tell)
        plan = sdist.plan_fetch(wanted, listing)
        tell(plan.describe())
        if dry_run:
            for f in plan.missing.values():
                tell(f"would download {f.filename} ({f.size / (1 << 20):.1f} MiB) from {f.url}")
            return done()
        archives = sdist.fetch_planned(plan, _download_progress(say))
        matrix = patch_matrix.build_matrix(archives, say=tell)
        for row in matrix.rows:
            if row.error:
                log.write(f"{row.version}: {row.error}")
        if doc:
            write_doc(Path(doc), patch_matrix_render.render_markdown(matrix))
            tell(f"wrote {doc}")
        tell(f"log: {log.path}")
    return done(patch_matrix_render.render_text(matrix), matrix.to_dict())


def _download_progress(say: Say) -> sdist.Progress:
    """Downloaded MiB, said at every tenth of the file."""
    last = [-1]

    def progress(got: int, total: int) -> None:
        step = got * 10 // total if total else 0
        if step != last[0]:
            last[0] = step
            say(f"  {got / (1 << 20):.0f}/{total / (1 << 20):.0f} MiB")

    return progress
