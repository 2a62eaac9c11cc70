"""``invoke patches.matrix``: plan the downloads, say how much, evaluate, print, write the doc.

Progress and the download plan go to stderr (and the task's log file) so that ``--json`` keeps
stdout machine-readable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from turbo import patch_matrix, patch_matrix_render, sdist
from turbo.console import TaskLog
from turbo.errors import TurboError, UsageError
from turbo.pins import load_pins


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


def run(*, versions: str, every: bool, as_json: bool, doc: str, dry_run: bool) -> None:
    if versions and every:
        raise UsageError("patches.matrix", "--versions and --all exclude each other", "Pick one.")
    if doc:
        check_doc_target(Path(doc))
    with TaskLog("patches-matrix") as log:

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
            log.write(line)

        floor = load_pins().vllm.sdist_version
        wanted, listing = patch_matrix.resolve_versions(_split(versions) or None, floor, say)
        plan = sdist.plan_fetch(wanted, listing)
        say(plan.describe())
        if dry_run:
            for f in plan.missing.values():
                say(f"would download {f.filename} ({f.size / (1 << 20):.1f} MiB) from {f.url}")
            return
        last = [-1]

        def progress(done: int, total: int) -> None:
            step = done * 10 // total if total else 0
            if step != last[0]:
                last[0] = step
                print(f"  {done / (1 << 20):.0f}/{total / (1 << 20):.0f} MiB", file=sys.stderr)

        archives = sdist.fetch_planned(plan, progress)
        matrix = patch_matrix.build_matrix(archives, say=say)
        for row in matrix.rows:
            if row.error:
                log.write(f"{row.version}: {row.error}")
        if as_json:
            print(patch_matrix_render.render_json(matrix))
        else:
            print(patch_matrix_render.render_text(matrix))
        if doc:
            write_doc(Path(doc), patch_matrix_render.render_markdown(matrix))
            say(f"wrote {doc}")
        say(f"log: {log.path}")
