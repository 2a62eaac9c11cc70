"""The E2M1 / NVFP4 kernels as plain data: where their sources are, the conversion variants
and thread layouts, the build targets, the cache keys, and the records the kernel commands
hand back (compile checks, the probe's plan, benchmark rows, quantised tensors).

Builds are cached under ``<cache>/kernels/<name>-<digest>``, keyed by the sources and the
command line (:func:`digest`), so a changed source or flag is a new build and a re-run reuses a
finished one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo import assets, paths
from turbo.errors import UsageError

KERNELS_DIR = assets.locate(assets.KERNELS)
HEADER = KERNELS_DIR / "e2m1.cuh"
HOST_CHECK_SRC = KERNELS_DIR / "e2m1_host_check.cpp"
DEVICE_CHECK_SRC = KERNELS_DIR / "e2m1_device_check.cu"
QUANT_SOURCES = (
    KERNELS_DIR / "nvfp4_quant.cu",
    KERNELS_DIR / "nvfp4_quant.h",
    KERNELS_DIR / "nvfp4_quant_ext.cpp",
)

# Conversion variants of the quantisation kernel (kernels/nvfp4_quant.h).
VARIANTS: dict[str, int] = {"turbo": 0, "chain": 1, "cuda": 2, "none": 3}
# Thread layouts of the quantisation kernel (kernels/nvfp4_quant.h). DEFAULT_LAYOUT is the one
# that measured fastest on the H100 (BENCHMARKS.md); all are tested bit-exact.
LAYOUTS: dict[str, int] = {"block": 0, "pair": 1, "tile": 2, "flat": 3}
DEFAULT_LAYOUT = "tile"
VARIANT_LABELS: dict[str, str] = {
    "turbo": "turbo_e2m1x8 (software magic-add unless the target has cvt)",
    "chain": "seed's comparison chain",
    "cuda": "CUDA __nv_cvt_float2_to_fp4x2",
    "none": "no conversion (ceiling)",
}


def require_sources() -> Path:
    """``kernels/``, or one line saying it is missing (an installed package without it)."""
    return assets.require(assets.KERNELS)


def gencode(arch: str) -> list[str]:
    """nvcc flags for one target: ``121a`` -> ``-gencode arch=compute_121a,code=sm_121a``.

    ``-arch=sm_121a`` alone emits compute_121 PTX and fails for arch-specific instructions.
    """
    if not re.fullmatch(r"\d{2,3}[af]?", arch):
        raise UsageError(
            "arch",
            f"{arch!r} is not of the form 90, 121, 121a or 120f",
            "Pass the compute capability digits with an optional a/f suffix.",
        )
    return ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]


def arch_for(cc: str) -> str:
    """The build target that gives a GPU of compute capability ``cc`` the hardware E2M1 path
    when it has one: the arch-specific target from 10.0 on (12.1 -> 121a), else plain (90)."""
    major, _, minor = cc.partition(".")
    if not major.isdigit() or not minor.isdigit():
        raise UsageError(
            "compute capability",
            f"{cc!r} is not of the form 12.1",
            "Pass --arch explicitly (for example 121a).",
        )
    digits = f"{major}{minor}"
    return f"{digits}a" if int(major) >= 10 else digits


def digest(sources: Sequence[Path], argv: Sequence[str]) -> str:
    """The cache key of one build: the sources' names and bytes and its command line."""
    require_sources()
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update("\0".join(argv).encode())
    return h.hexdigest()[:16]


def build_root() -> Path:
    return paths.cache_dir() / "kernels"


def quant_build_dir() -> Path:
    return build_root() / "nvfp4-quant-ext"


@dataclass(frozen=True)
class CompileResult:
    arch: str
    force_software: bool
    ok: bool
    ptx_has_cvt: bool
    sass_has_cvt: bool | None  # None when no SASS disassembler is available
    message: str


@dataclass(frozen=True)
class ProbePlan:
    arch: str
    build_argv: list[str]
    run_argv: list[str]


@dataclass
class Quantized:
    """NVFP4 output: ``data`` [rows, cols/2] uint8 (two codes a byte, element 2i in the low
    nibble), ``sf_swizzled`` [round_up(rows,128), round_up(cols/16,4)] uint8 e4m3 bits in vLLM's
    128x4 layout, ``sf_linear`` [rows, cols/16] uint8 e4m3 bits (or None)."""

    data: Any
    sf_swizzled: Any
    sf_linear: Any


@dataclass(frozen=True)
class BenchRow:
    variant: str
    layout: str
    dtype: str
    ms: float
    gbps: float
    share_of_copy: float


@dataclass(frozen=True)
class BenchResult:
    device: str
    rows: int
    cols: int
    bytes_moved: int
    copy_ms: float
    copy_gbps: float
    table: list[BenchRow]


def device_check_argv(nvcc: str, arch: str, out: Path, defines: Sequence[str] = ()) -> list[str]:
    """The nvcc line that builds the exhaustive device check (kernels/e2m1_device_check.cu)
    for one target into ``out``: what the probe builds and what its dry run prints."""
    return [
        nvcc,
        "-O3",
        "-std=c++17",
        *gencode(arch),
        *defines,
        f"-I{KERNELS_DIR}",
        str(DEVICE_CHECK_SRC),
        "-o",
        str(out / "e2m1_device_check"),
    ]
