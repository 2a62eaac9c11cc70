"""Compiling the kernel sources: cached builds of the E2M1 checks, and the compile check that
reports whether the hardware E2M1 instruction reaches a target's PTX and SASS.

A build lands atomically: it is compiled in a temporary directory beside the cache entry and
renamed into place, so an interrupted build never leaves a half-written binary behind and a
re-run reuses a finished one. A failed build is kept as ``<entry>.failed`` with its log.
The tools (nvcc, the C++ compiler, include directories, cuobjdump) are handed in, found by
:mod:`turbo.kernel_tools`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from turbo import proc
from turbo.errors import TurboError
from turbo.kernel_sources import (
    DEVICE_CHECK_SRC,
    HEADER,
    HOST_CHECK_SRC,
    KERNELS_DIR,
    CompileResult,
    build_root,
    device_check_argv,
    digest,
    gencode,
    require_sources,
)

_CVT_PTX = "cvt.rn.satfinite.e2m1x2.f32"
PROBE_KERNEL = """#include "e2m1.cuh"
extern "C" __global__ void turbo_e2m1_compile_probe(const float* x, uint32_t* y) {
  const int i = threadIdx.x;
  y[i] = turbo_e2m1x8(x[8 * i], x[8 * i + 1], x[8 * i + 2], x[8 * i + 3], x[8 * i + 4],
                      x[8 * i + 5], x[8 * i + 6], x[8 * i + 7]) ^ turbo_e2m1x2(x[i], -x[i]);
}
"""


def cached_build(
    name: str, sources: Sequence[Path], make_argv: Callable[[Path], list[str]], output: str
) -> Path:
    """Run ``make_argv(tmpdir)`` once per distinct (sources, argv); return the cached output.

    ``make_argv`` gets the directory to write ``output`` into; the digest is computed from the
    argv with a placeholder directory so that it is stable across runs.
    """
    key = digest([*sources, HEADER], make_argv(Path("@OUT@")))
    final = build_root() / f"{name}-{key}"
    target = final / output
    if target.is_file():
        return target
    build_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=build_root()))
    try:
        _compile(name, make_argv(tmp), tmp, final)
        try:
            tmp.rename(final)
        except OSError:
            if not target.is_file():  # a concurrent build that failed to land: report it
                raise
    finally:
        if tmp.exists():
            failed = final.with_name(final.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            tmp.rename(failed)
    return target


def _compile(name: str, argv: list[str], tmp: Path, final: Path) -> None:
    """One compiler run into ``tmp``, its output kept in ``tmp/build.log``."""
    res = proc.capture(argv, timeout=None)  # a compile takes what it takes
    fault = f"{res.why()}\n" if res.fault else ""
    (tmp / "build.log").write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}{fault}")
    if not res.ok:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [
            res.why() if res.fault else "(no output)"
        ]
        raise TurboError(
            f"building {name}",
            f"the compiler failed: {tail[0]}",
            f"See {final}.failed/build.log.",
        )


def host_check_library(cutlass_include: Path, cuda_include: Path, cxx: str) -> Path:
    """The host build of e2m1.cuh with CUTLASS, as a shared library for ctypes."""
    inc = [f"-I{KERNELS_DIR}", f"-I{cutlass_include}", f"-I{cuda_include}"]

    def argv(out: Path) -> list[str]:
        return [
            cxx,
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-DTURBO_WITH_CUTLASS",
            "-Wno-deprecated-declarations",
            *inc,
            str(HOST_CHECK_SRC),
            "-o",
            str(out / "libe2m1_host_check.so"),
        ]

    return cached_build("e2m1-host-check", [HOST_CHECK_SRC], argv, "libe2m1_host_check.so")


def device_check_binary(nvcc: str, arch: str, force_software: bool = False) -> Path:
    """The exhaustive device check (kernels/e2m1_device_check.cu) for one target."""
    defines = ["-DTURBO_E2M1_FORCE_SOFTWARE"] if force_software else []

    def argv(out: Path) -> list[str]:
        return device_check_argv(nvcc, arch, out, defines)

    return cached_build(f"e2m1-device-check-{arch}", [DEVICE_CHECK_SRC], argv, "e2m1_device_check")


def compile_check(
    nvcc: str,
    arch: str,
    force_software: bool = False,
    workdir: Path | None = None,
    sass: list[str] | None = None,
) -> CompileResult:
    """Compile a small kernel using the public API for ``arch``; report whether the E2M1
    instruction appears in its PTX and (when ``sass``, a disassembler's argv, is given) its
    SASS."""
    require_sources()
    work = workdir or Path(tempfile.mkdtemp(prefix="e2m1-compile-"))
    src = work / "probe.cu"
    src.write_text(PROBE_KERNEL)
    defines = ["-DTURBO_E2M1_FORCE_SOFTWARE"] if force_software else []
    base = [nvcc, "-O3", "-std=c++17", *gencode(arch), *defines, f"-I{KERNELS_DIR}"]
    ptx = proc.capture([*base, "-ptx", str(src), "-o", str(work / "probe.ptx")], timeout=None)
    cubin = proc.capture([*base, "-cubin", str(src), "-o", str(work / "probe.cubin")], timeout=None)
    if not (ptx.ok and cubin.ok):
        msg = (ptx.stderr + cubin.stderr).strip().splitlines()
        return CompileResult(arch, force_software, False, False, None, msg[-1] if msg else "")
    ptx_text = (work / "probe.ptx").read_text()
    sass_has = _sass_has_cvt(sass, work / "probe.cubin") if sass else None
    return CompileResult(arch, force_software, True, _CVT_PTX in ptx_text, sass_has, "compiled")


def _sass_has_cvt(sass: list[str], cubin: Path) -> bool | None:
    """Whether the cubin's SASS holds the E2M1 conversion; None when it cannot be dumped."""
    # cuobjdump runs nvdisasm, which the wheels keep next to it, not on PATH.
    path = f"{Path(sass[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    dump = proc.capture([*sass, str(cubin)], timeout=None, env={"PATH": path})
    if not dump.ok:
        return None
    # SASS spells the conversion F2FP.SATFINITE.E2M1.F32... on Blackwell targets.
    return re.search(r"\bF2FP\.[A-Z0-9_.]*E2M1", dump.stdout) is not None
