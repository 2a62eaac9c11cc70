"""vLLM's requirements for a build: the files pip reads (build.txt without what the environment
provides, torch held by a constraint) and, inside pixi, the check of the tree's requirement
files against pixi.toml's declaration and the installed set."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turbo import activation
from turbo import vllm_requirements as vr
from turbo.build_types import BuildPlan
from turbo.console import TaskLog
from turbo.errors import TurboError

Echo = Callable[[str], None]


def write_requirements(plan: BuildPlan) -> None:
    """build.txt without torch (use_existing_torch.py strips it) and without the tools the
    environment already has: pip's cmake/ninja would shadow the pixi environment's own."""
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    keep_out = {"torch", "torchvision", "torchaudio"}
    if plan.options.target == "cuda":
        keep_out |= {"cmake", "ninja"}
    reqs = []
    for raw in (plan.src_dir / "requirements" / "build.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() if line else ""
        if line and name not in keep_out:
            reqs.append(line)
    (plan.build_dir / "build-requirements.txt").write_text("\n".join(reqs) + "\n")
    torch = plan.toolchain.torch
    (plan.build_dir / "constraints.txt").write_text(
        f"# keep the environment's torch: a build against another torch would not load\n"
        f"torch=={torch}\n"
    )
    cfg = Path(plan.env["DIST_EXTRA_CONFIG"])
    cmake_dir = plan.build_dir / f"cmake-{plan.options.target}"
    cfg.write_text(f"[build_ext]\nbuild_temp = {cmake_dir}\n")


def check_requirements(plan: BuildPlan, log: TaskLog, echo: Echo) -> dict[str, Any]:
    """The tree's own requirement files against pixi.toml's declaration and the installed set;
    any difference stops the build with one line naming each package."""
    files = list(vr.BUILD_FILES)
    if plan.options.runtime_deps:
        files.insert(0, f"requirements/{'cuda' if plan.options.target == 'cuda' else 'common'}.txt")
    reqs = vr.tree_requirements(plan.src_dir, files)
    environment = os.environ.get("PIXI_ENVIRONMENT_NAME") or "default"
    declared = vr.declared(activation.load_manifest(), environment)
    installed = vr.probe_installed(plan.options.python)
    platform = vr.current_platform(plan.toolchain.machine or os.uname().machine)
    diffs = vr.differences(
        reqs,
        platform,
        declared_specs=declared,
        installed=installed.versions,
        requires_of=installed.requires_of,
    )
    summary = {"files": files, "checked": len(reqs), "differences": [d.text() for d in diffs]}
    log.write(json.dumps(summary))
    if diffs:
        raise TurboError(
            "vLLM's requirements vs pixi.toml",
            vr.one_line(diffs),
            "Declare them in pixi.toml's [pypi-dependencies] and run `pixi install`, or re-run "
            "with --pip-deps to let pip install them (pixi puts its versions back later).",
        )
    echo(f"  {len(reqs)} requirements of {', '.join(files)}: all declared and installed")
    return summary
