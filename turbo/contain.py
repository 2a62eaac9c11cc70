"""Paths read from files stay inside their root.

A patch record, a model manifest, a staging record or a pid file is data anyone with write
access to the directory can edit. Every path such a file names goes through :func:`inside`
before it is read, written or deleted: it must be relative, have no ``..`` part, and still lie
inside its root once every symlink on the way is followed. Otherwise the caller gets one
:class:`Escape` line and touches nothing.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from turbo.errors import TurboError


class Escape(TurboError):
    """A path read from a file leads outside the directory it belongs to."""


def lexical_problem(rel: object) -> str | None:
    """Why ``rel`` cannot name a place inside any root, judged from its text alone."""
    if not isinstance(rel, str) or not rel or rel in (".", "./"):
        return "is not a file name"
    if "\0" in rel or "\\" in rel:
        return "contains a NUL or a backslash"
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("~"):
        return "is an absolute path"
    if ".." in p.parts:
        return "climbs out with '..'"
    return None


def inside(root: Path, rel: object, *, source: str, fix: str) -> Path:
    """``root / rel`` with symlinks resolved, refused unless it stays strictly inside ``root``.

    ``source`` names the file the path was read from (for the message); ``fix`` says what to
    do. The returned path is the resolved one, so a later operation cannot be redirected by a
    symlink that was checked here.
    """
    base = root.resolve()
    why = lexical_problem(rel)
    if why is None:
        target = (base / str(rel)).resolve()
        if target == base or not target.is_relative_to(base):
            why = f"leads outside {base} (through a symlink)"
        else:
            return target
    raise Escape(f"{source}", f"names {rel!r}, which {why}; nothing was touched", fix)


def check_dir(root: Path, rel: str, *, source: str, fix: str) -> Path:
    """A directory of ours inside ``root`` (a staging or pristine-copy folder): same rule,
    and it must not be a symlink, since everything below it would follow the link."""
    p = root / rel
    if p.is_symlink():
        raise Escape(source, f"{p} is a symlink (to {p.readlink()}); nothing was touched", fix)
    return inside(root, rel, source=source, fix=fix)
