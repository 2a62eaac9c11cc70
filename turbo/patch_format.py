"""One ``git format-patch`` file, read: its subject, its trailers and the hunks it changes.

A patch declares in its message which vLLM refs it is for (``Applies-To: 0.16.0 3b30e615...``)
and its upstream status (``Upstream-Status:``). Reading a patch needs nothing of the tree it is
for; applying it is :mod:`turbo.patching`'s work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from turbo.errors import TurboError

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_HEX_REF = re.compile(r"[0-9a-f]{7,40}")


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_len: int
    header: str


@dataclass(frozen=True)
class FileDiff:
    old: str | None  # None for a file the patch creates
    new: str | None  # None for a file the patch deletes
    hunks: tuple[Hunk, ...]

    @property
    def path(self) -> str:
        return self.new or self.old or "?"


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    subject: str
    applies_to: tuple[str, ...]
    upstream_status: str
    files: tuple[FileDiff, ...]

    def touched(self) -> set[str]:
        return {p for f in self.files for p in (f.old, f.new) if p}


def _subject(lines: list[str]) -> str:
    for i, line in enumerate(lines):
        if line.startswith("Subject:"):
            text = line[len("Subject:") :].strip()
            # format-patch folds long subjects onto indented continuation lines
            for more in lines[i + 1 :]:
                if not more.startswith(" "):
                    break
                text += more.rstrip("\n")
            return re.sub(r"^\[PATCH[^\]]*\]\s*", "", text)
    return ""


def _trailers(head: str) -> tuple[tuple[str, ...], str]:
    """``Applies-To:`` refs and ``Upstream-Status:`` from the message above the first diff."""
    applies: tuple[str, ...] = ()
    status = ""
    for line in head.splitlines():
        if line.startswith("Applies-To:"):
            applies = tuple(w.strip(",") for w in line.split(":", 1)[1].split() if w.strip(","))
        elif line.startswith("Upstream-Status:"):
            status = line.split(":", 1)[1].strip()
    return applies, status


def _side(line: str, prefix: str) -> str | None:
    """The path of a ``---``/``+++`` line; None for /dev/null (a created or deleted file)."""
    path = line[4:].strip()
    return None if path == "/dev/null" else path.removeprefix(prefix)


def _file_diffs(lines: list[str]) -> list[FileDiff]:
    files: list[FileDiff] = []
    old: str | None = None
    new: str | None = None
    hunks: list[Hunk] = []
    in_diff = False
    for line in lines:
        if line.startswith("diff --git "):
            if in_diff:
                files.append(FileDiff(old, new, tuple(hunks)))
            in_diff, hunks = True, []
            m = re.match(r"diff --git a/(\S+) b/(\S+)", line)
            old, new = (m.group(1), m.group(2)) if m else (None, None)
        elif in_diff and line.startswith("--- "):
            old = _side(line, "a/")
        elif in_diff and line.startswith("+++ "):
            new = _side(line, "b/")
        elif in_diff and (m := _HUNK.match(line)):
            hunks.append(Hunk(int(m.group(1)), int(m.group(2) or 1), line))
    if in_diff:
        files.append(FileDiff(old, new, tuple(hunks)))
    return files


def parse_patch(path: Path) -> Patch:
    """Read one format-patch file: subject, trailers, and which files and hunks it changes."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    head, _, _ = text.partition("\ndiff --git ")
    applies, status = _trailers(head)
    if not applies:
        raise TurboError(
            f"patch {path.name}",
            "it has no 'Applies-To:' line in its message",
            "Add the vLLM refs it is for (versions or commits).",
        )
    files = _file_diffs(lines)
    if not files:
        raise TurboError(
            f"patch {path.name}", "it contains no diff", "Regenerate it with git format-patch."
        )
    return Patch(path.name, path, _subject(lines), applies, status, tuple(files))


def ref_matches(declared: str, ref: str) -> bool:
    """A version matches exactly; a commit matches when one hash is a prefix of the other."""
    a, b = declared.lower(), ref.lower()
    if a == b:
        return True
    return bool(
        _HEX_REF.fullmatch(a) and _HEX_REF.fullmatch(b) and (a.startswith(b) or b.startswith(a))
    )
