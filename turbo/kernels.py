"""The kernel commands: ``kernels.probe``, ``kernels.bench`` and ``kernels.compile-check``.

Each finds the tools it needs (:mod:`turbo.kernel_tools`) and hands them to the piece that
does the work: the cached builds and compile checks (:mod:`turbo.kernel_build`), the DGX Spark
probe (:mod:`turbo.kernel_probe`), the quantisation kernel and its benchmark
(:mod:`turbo.kernel_quant`). The names the tests and tasks use are all reachable from here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from turbo import kernel_build, kernel_probe
from turbo.console import TaskLog, render_table
from turbo.kernel_build import PROBE_KERNEL, cached_build
from turbo.kernel_probe import gpu_compute_capability, render_probe
from turbo.kernel_quant import bench_quant, load_quant_extension, nvfp4_quantize, render_bench
from turbo.kernel_sources import (
    DEFAULT_LAYOUT,
    DEVICE_CHECK_SRC,
    HEADER,
    HOST_CHECK_SRC,
    KERNELS_DIR,
    LAYOUTS,
    QUANT_SOURCES,
    VARIANT_LABELS,
    VARIANTS,
    BenchResult,
    BenchRow,
    CompileResult,
    ProbePlan,
    Quantized,
    arch_for,
    build_root,
    gencode,
    quant_build_dir,
)
from turbo.kernel_tools import cuda_include, cutlass_include, cxx, nvcc, sass_tool
from turbo.outcome import Outcome, checked, done

__all__ = [
    "DEFAULT_LAYOUT",
    "DEVICE_CHECK_SRC",
    "HEADER",
    "HOST_CHECK_SRC",
    "KERNELS_DIR",
    "LAYOUTS",
    "PROBE_KERNEL",
    "QUANT_SOURCES",
    "VARIANTS",
    "VARIANT_LABELS",
    "BenchResult",
    "BenchRow",
    "CompileResult",
    "ProbePlan",
    "Quantized",
    "arch_for",
    "bench",
    "bench_quant",
    "build_root",
    "cached_build",
    "compile_check",
    "compile_checks",
    "cuda_include",
    "cutlass_include",
    "cxx",
    "device_check_binary",
    "gencode",
    "gpu_compute_capability",
    "host_check_library",
    "load_quant_extension",
    "nvcc",
    "nvfp4_quantize",
    "probe",
    "probe_plan",
    "quant_build_dir",
    "render_bench",
    "render_probe",
    "run_probe",
    "sass_tool",
]

Say = Callable[[str], None]


# --------------------------------------------------------------------------- composed pieces
def host_check_library() -> Path:
    """The host build of e2m1.cuh with CUTLASS, as a shared library for ctypes."""
    cutlass, cuda = cutlass_include(), cuda_include()
    return kernel_build.host_check_library(cutlass, cuda, cxx())


def device_check_binary(arch: str, force_software: bool = False) -> Path:
    """The exhaustive device check (kernels/e2m1_device_check.cu) for one target."""
    return kernel_build.device_check_binary(nvcc(), arch, force_software)


def compile_check(
    arch: str, force_software: bool = False, workdir: Path | None = None
) -> CompileResult:
    """Compile a small kernel using the public API for ``arch``; report whether the E2M1
    instruction appears in its PTX and (when a disassembler exists) its SASS."""
    tool = nvcc()
    return kernel_build.compile_check(tool, arch, force_software, workdir, sass_tool())


def probe_plan(arch: str | None = None) -> ProbePlan:
    """What ``kernels.probe`` runs: build the device check for this GPU's target, run it."""
    if arch is None:
        arch = kernel_probe.gpu_arch()
    return kernel_probe.plan(arch, nvcc())


def run_probe(plan: ProbePlan, log: Say = print) -> dict[str, Any]:
    """Build (cached) and run the exhaustive device check; return its JSON report."""
    log(f"building the device check for sm_{plan.arch} (cached after the first time)")
    binary = device_check_binary(plan.arch)
    log(f"running all 2^32 inputs on the GPU: {binary}")
    return kernel_probe.run_device_check(binary, plan.arch)


# --------------------------------------------------------------------------- commands
def _logged(say: Say, log: TaskLog) -> Say:
    def both(line: str) -> None:
        log.write(line)
        say(line)

    return both


def probe(arch: str | None, *, dry_run: bool, say: Say) -> Outcome:
    """``kernels.probe``: the device check on this GPU (or, dry, the commands it would run).
    Exit 1 when the hardware and software paths disagree anywhere."""
    plan = probe_plan(arch)
    if dry_run:
        return done(
            f"build: {' '.join(plan.build_argv)}   (cached under {build_root()})\n"
            f"run:   {' '.join(plan.run_argv)}"
        )
    with TaskLog("kernels-probe") as log:
        report = run_probe(plan, _logged(say, log))
        log.write(json.dumps(report))
    text = f"{render_probe(report)}\nlog: {log.path}"
    return checked(text, report, failed=report["exit_code"] != 0)


def bench(
    *,
    rows: int,
    cols: int,
    iters: int,
    repeats: int,
    variants: Sequence[str],
    dtypes: Sequence[str],
    layouts: Sequence[str],
    out: str,
    dry_run: bool,
    say: Say,
) -> Outcome:
    """``kernels.bench``: the quantisation kernel per variant, dtype and layout (none given:
    the kernel's default), each as a share of a copy moving the same bytes."""
    vs, ds, ls = list(variants), list(dtypes), list(layouts) or [DEFAULT_LAYOUT]
    if dry_run:
        return done(
            f"build: torch.utils.cpp_extension.load({[str(p) for p in QUANT_SOURCES]}, "
            f"build_directory={quant_build_dir()}/<name>)  [nvcc -O3 -std=c++17 "
            "-gencode for this GPU]\n"
            f"run:   bench_quant(rows={rows}, cols={cols}, iters={iters}, repeats={repeats}, "
            f"variants={vs}, dtypes={ds}, layouts={ls})"
        )
    with TaskLog("kernels-bench") as log:
        result = bench_quant(rows, cols, iters, repeats, vs, ds, _logged(say, log), ls)
        data = dataclasses.asdict(result)
        log.write(json.dumps(data))
    if out:
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
    return done(render_bench(result), data)


def compile_checks(archs: Sequence[str], force_software: bool) -> Outcome:
    """``kernels.compile-check``: one compile per target; exit 1 when any fails to compile."""
    results = [compile_check(a, force_software) for a in archs]
    table = render_table(
        ["arch", "forced sw", "compiles", "cvt in PTX", "cvt in SASS"],
        [
            (
                r.arch,
                r.force_software,
                r.ok,
                r.ptx_has_cvt,
                "n/a" if r.sass_has_cvt is None else r.sass_has_cvt,
            )
            for r in results
        ],
    )
    data = [dataclasses.asdict(r) for r in results]
    return checked(table, data, failed=not all(r.ok for r in results))
