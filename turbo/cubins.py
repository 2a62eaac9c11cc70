"""Which GPU targets a build's shared objects carry code for, and whether GB10 runs it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from turbo import proc
from turbo.build_types import GB10_CUBINS
from turbo.errors import TurboError

LIST_TIMEOUT_S = 300.0


def cubin_targets(cuobjdump: str, so_files: list[Path]) -> dict[str, list[str]]:
    """sm_* targets of the cubins in each shared object (``cuobjdump --list-elf``)."""
    out: dict[str, list[str]] = {}
    for so in so_files:
        # A shared object without device code makes cuobjdump fail: it simply has no cubins.
        res = proc.capture([cuobjdump, "--list-elf", str(so)], timeout=LIST_TIMEOUT_S)
        if res.fault:
            raise TurboError(
                f"listing the cubins of {so.name}",
                res.why(),
                "Check the CUDA toolkit's cuobjdump (the pixi environment has it).",
            )
        found = re.findall(r"\.(sm_\d+[af]?)\.cubin", res.stdout)
        out[so.name] = sorted(set(found))
    return out


def gb10_ok(targets: Mapping[str, list[str]]) -> bool:
    return any(t in GB10_CUBINS for ts in targets.values() for t in ts)
