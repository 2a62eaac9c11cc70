"""The patch matrix as plain data: one state per patch and release, and each release's facts.

``turbo.patch_matrix`` fills it from the releases' sdists, ``turbo.patch_matrix_render`` turns
it into the table, the JSON and docs/patch-matrix.md. The states:

- ``applies``: the release needs the patch and takes it as is;
- ``upstream``: the release already does what the patch is for (our exact lines, or its own
  fix that the patch's intent check recognises);
- ``conflicts``: neither; the cell names the file and hunk that fail;
- ``not-for-this-ref``: outside the patch's ``Applies-To:``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

APPLIES, UPSTREAM, CONFLICTS, NOT_FOR_REF = "applies", "upstream", "conflicts", "not-for-this-ref"
STATES = (APPLIES, UPSTREAM, CONFLICTS, NOT_FOR_REF)
# The arch-table columns: CUDA_ARCHS, the Marlin lists, and every FP4 list by its own name.
MARLIN_FAMILIES = (
    "MARLIN_ARCHS", "MARLIN_BF16_ARCHS", "MARLIN_FP8_ARCHS", "MARLIN_OTHER_ARCHS",
    "MARLIN_MOE_ARCHS", "MARLIN_MOE_FP8_ARCHS", "MARLIN_MOE_OTHER_ARCHS",
)  # fmt: skip
# vLLM states its build pins in requirements/build.txt, from 0.20.0 in requirements/build/cuda.txt.
BUILD_TORCH_FILES = ("requirements/build.txt", "requirements/build/cuda.txt")
RUNTIME_TORCH_FILE = "requirements/cuda.txt"
TORCH_FILES = (*BUILD_TORCH_FILES, RUNTIME_TORCH_FILE)
Say = Callable[[str], None]


@dataclass(frozen=True)
class Cell:
    """One patch on one release."""

    state: str
    detail: str
    in_scope: bool
    forward: bool  # git apply --check
    reverse: bool  # git apply --reverse --check
    conflict: str | None  # the failing file and hunk, when forward fails
    intent: bool | None
    intent_detail: str
    intent_after: bool | None = None  # the intent check on the patched tree (where applied)


@dataclass
class Row:
    """One release."""

    version: str
    sdist_sha256: str
    torch: dict[str, str] = field(default_factory=dict)
    patches: dict[str, Cell] = field(default_factory=dict)
    archs: dict[str, str] = field(default_factory=dict)
    archs_patched: dict[str, str] | None = None
    error: str | None = None


@dataclass
class Matrix:
    arch_list: str
    cuda_version: str
    series: list[dict[str, Any]]
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
