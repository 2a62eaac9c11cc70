"""The build stamp: one JSON file saying exactly what was built, from what, and how.

Readers (doctor, serve, install-wheel, the two-node check) rely on these keys: ``result``
("ok" when usable), ``commit``, ``arch_list``, ``patch_digest``, ``torch``, ``cuda``,
``machine``, ``finished_at``. The stamp is written atomically (temp file + rename) so a reader
never sees half a file, and a killed build leaves ``result: "building"``, never ``"ok"``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turbo import paths
from turbo.errors import TurboError
from turbo.jsonfile import read_json, write_json_atomic

SCHEMA = 1
OK, FAILED, BUILDING = "ok", "failed", "building"

# What makes two builds the same build: two TP=2 nodes must agree on every one of these.
IDENTITY_FIELDS = (
    "commit",
    "patch_digest",
    "arch_list",
    "target",
    "torch",
    "cuda",
    "machine",
    "python",
    "vllm_version",
    # An adopted install (`invoke adopt-vllm`): the digest of pip's RECORD of its files.
    "installed_digest",
)


def canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(data).encode()).hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_stamp(path: Path | None = None) -> dict[str, Any] | None:
    """The stamp, or None when there is none or it is unreadable (treated as "not built")."""
    return read_json(path or paths.stamp_path())


def write_stamp(stamp: Mapping[str, Any], path: Path | None = None) -> Path:
    # 0644: a stamp is copied between nodes beside its wheel.
    return write_json_atomic(
        path or paths.stamp_path(), {"schema": SCHEMA, **stamp}, sort_keys=True, mode=0o644
    )


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """Everything that changes the built artefact (not MAX_JOBS: it changes only speed)."""
    return digest(inputs)


def unchanged(stamp: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> str | None:
    """Why a rebuild is needed (one line), or None when ``stamp`` is an ok build of ``inputs``."""
    if stamp is None:
        return "no build stamp yet"
    if stamp.get("result") != OK:
        return f"the last build did not finish (result: {stamp.get('result')})"
    old = stamp.get("inputs")
    if not isinstance(old, dict):
        return "the stamp records no inputs"
    if stamp.get("inputs_digest") == inputs_digest(inputs):
        return None
    changed = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
    return "inputs changed: " + ", ".join(
        f"{k} {_short(old.get(k))} -> {_short(inputs.get(k))}" for k in changed
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else canonical({"v": value})[5:-1]
    return text[:12] if len(text) == 64 or len(text) == 40 else text


def identity(stamp: Mapping[str, Any]) -> dict[str, Any]:
    """The fields two nodes must share, and nothing that differs harmlessly (paths, times)."""
    return {k: stamp.get(k) for k in IDENTITY_FIELDS}


def identity_digest(stamp: Mapping[str, Any]) -> str:
    return digest(identity(stamp))


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Each identity field on which two stamps differ, as (field, a's value, b's value)."""
    ia, ib = identity(a), identity(b)
    return [(k, ia[k], ib[k]) for k in IDENTITY_FIELDS if ia[k] != ib[k]]


def require_same_build(
    local: Mapping[str, Any],
    remote: Mapping[str, Any],
    *,
    local_name: str = "this node",
    remote_name: str = "the other node",
) -> None:
    """Stop with both digests and every differing field when two nodes built differently."""
    diff = compare(local, remote)
    if not diff:
        return
    fields = "; ".join(f"{k}: {_short(x)} vs {_short(y)}" for k, x, y in diff)
    raise TurboError(
        "same build on both nodes",
        f"{local_name} has build {identity_digest(local)[:16]}, {remote_name} has "
        f"{identity_digest(remote)[:16]} ({fields})",
        "Install the same wheel on both (`invoke wheel` on one, `invoke "
        "install-wheel` on the other) and retry.",
    )


def require_ok(stamp: Mapping[str, Any] | None, where: Path | None = None) -> Mapping[str, Any]:
    if stamp is None or stamp.get("result") != OK:
        state = "missing" if stamp is None else f"result {stamp.get('result')!r}"
        raise TurboError(
            f"build stamp {where or paths.stamp_path()}",
            f"is {state}",
            "Run `pixi run build-vllm` first.",
        )
    return stamp
