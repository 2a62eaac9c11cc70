"""The build's plain data: what the user asked for, what the machine offers, what will run.

Every stage of ``build-vllm`` hands these records to the next; none of them does anything.
A plan is decided once, up front, so ``--dry-run`` shows exactly what a real run executes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

# Build targets we support: "cuda" is the real GB10 build; "empty" is vLLM's own
# VLLM_TARGET_DEVICE=empty mode (Python only, no extensions), used on CPU machines and in tests.
TARGETS = ("cuda", "empty")

# Local-source overrides for the sources vLLM's CMake would otherwise download (air-gapped
# builds): option name -> the environment variable vLLM 0.16's CMake reads.
OVERRIDES = {
    "cutlass": "VLLM_CUTLASS_SRC_DIR",
    "flash_attn": "VLLM_FLASH_ATTN_SRC_DIR",
    "flashmla": "FLASH_MLA_SRC_DIR",
    "qutlass": "QUTLASS_SRC_DIR",
    "triton_kernels": "TRITON_KERNELS_SRC_DIR",
}

# Shared objects whose load proves the CUDA build works; the first is required.
EXTENSIONS = ("vllm._C", "vllm._moe_C")

# Targets whose SASS runs on GB10 (sm_121): plain sm_12x cubins run on any later 12.y, the "f"
# family targets on all of 12.x; sm_120a does NOT (arch-specific code is not forward-portable).
GB10_CUBINS = ("sm_121a", "sm_121f", "sm_121", "sm_120f", "sm_120")


@dataclass(frozen=True)
class Toolchain:
    """What the build will use; recorded in the stamp so a rebuild is forced when it changes."""

    target: str
    python: str
    python_version: str
    machine: str
    torch: str
    torch_cuda: str | None
    nvcc: str | None = None
    cuda: str | None = None
    gcc: str | None = None
    cmake: str | None = None
    ninja: str | None = None
    ccache: str | None = None
    cuobjdump: str | None = None
    torch_error: str | None = None
    vllm_installed: str | None = None

    def versions(self) -> dict[str, str | None]:
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("python", "torch_error", "vllm_installed")
        }


@dataclass(frozen=True)
class Jobs:
    max_jobs: int
    nvcc_threads: int
    rule: str


@dataclass(frozen=True)
class BuildOptions:
    python: str = sys.executable
    target: str = "cuda"
    ref: str | None = None  # None: the pinned commit (or the --src tree's own version)
    repo: str | None = None  # None: the pinned repository
    src: Path | None = None
    arch_list: str | None = None
    max_jobs: int | None = None
    nvcc_threads: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    runtime_deps: bool = True
    # Install vLLM's requirements with pip. None: only outside a pixi environment; inside one,
    # pixi.toml declares them and the build only checks (pixi puts its own versions back over
    # whatever pip changes).
    pip_deps: bool | None = None
    force: bool = False
    verbose: bool = False
    # Which ref's patches to apply (default: the tree's own commit or version). For a fork or
    # mirror whose commit hash differs from the ref the patches were written for.
    patch_ref: str | None = None


class StepKind(Enum):
    """What a step does. The executor dispatches on this, never on the step's display name."""

    CHECK_TOOLCHAIN = "check toolchain"
    FETCH_SOURCE = "fetch source"
    USE_TREE = "use source tree"
    APPLY_PATCHES = "apply patches"
    RUN = "run"  # run ``argv``, nothing else
    INSTALL_BUILD_REQUIREMENTS = "install build requirements"  # write the files, run ``argv``
    CHECK_REQUIREMENTS = "check requirements"
    CHECK_EXTENSION = "check extension"  # run ``argv``; it imports the compiled extensions
    CHECK_IMPORTS = "check imports"  # run ``argv``; it prints vLLM's version as JSON
    LIST_CUBINS = "list cubins"  # ``argv`` is only shown: the executor lists each .so itself
    WRITE_STAMP = "write stamp"


@dataclass
class Step:
    """One step of the plan: its name (shown), what runs and where, and what kind it is."""

    name: str
    argv: list[str] | None  # None: done in this process (described by ``note``)
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # set on top of the inherited env
    note: str = ""
    commands: list[list[str]] = field(default_factory=list)  # what an in-process step runs
    kind: StepKind = StepKind.RUN


@dataclass
class BuildPlan:
    """Everything a build will do, decided before it starts; nothing changes it afterwards."""

    options: BuildOptions
    src_dir: Path
    source_kind: str  # "git" (fetched by us or --src checkout) or "sdist"
    fetch: bool  # True when we fetch with git into the managed directory
    repo: str | None
    ref: str
    patch_ref: str
    arch_list: str
    patch_digest: str
    toolchain: Toolchain  # the quick probe: versions only, no verdicts
    jobs: Jobs
    env: dict[str, str]
    steps: list[Step]
    inputs: dict[str, Any]
    inputs_digest: str
    build_dir: Path
    log_hint: Path


@dataclass(frozen=True)
class BuildResult:
    noop: bool
    reason: str
    stamp: dict[str, Any]
    seconds: float
    log: Path | None = None
