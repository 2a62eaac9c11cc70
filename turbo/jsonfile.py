"""Small JSON state files (stamps, manifests, records, pid files): read leniently, write atomically.

Every stage keeps its state in one of these, so they share one reader and one writer: a reader
never sees half a file, and a missing or unreadable file reads as "nothing recorded".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(
    path: Path, data: Any, *, sort_keys: bool = False, mode: int | None = None
) -> Path:
    """Write JSON through a temp file beside ``path`` and a rename: old file or new, never half.

    ``mode`` widens mkstemp's private 0600 where the file is meant to be shared (a build stamp
    copied to another node).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=sort_keys, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
