"""Which GPU targets a build's shared objects carry code for, and whether GB10 runs it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from turbo.build_types import GB10_CUBINS


def cubin_targets(cuobjdump: str, so_files: list[Path]) -> dict[str, list[str]]:
    """sm_* targets of the cubins in each shared object (``cuobjdump --list-elf``)."""
    out: dict[str, list[str]] = {}
    for so in so_files:
        proc = subprocess.run(
            [cuobjdump, "--list-elf", str(so)], capture_output=True, text=True, check=False
        )
        found = re.findall(r"\.(sm_\d+[af]?)\.cubin", proc.stdout)
        out[so.name] = sorted(set(found))
    return out


def gb10_ok(targets: Mapping[str, list[str]]) -> bool:
    return any(t in GB10_CUBINS for ts in targets.values() for t in ts)
