"""The E2M1 / NVFP4 kernels in ``kernels/``: building them on demand, the DGX Spark probe, the
quantisation entry point and its benchmark.

Builds are cached under ``<cache>/kernels/<name>-<digest>``, keyed by the sources and the
command line, and land atomically (built in a temporary directory, then renamed), so an
interrupted build never leaves a half-written binary behind and a re-run reuses a finished one.
torch is imported only by the functions that need it (it is not a dependency of the CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo import activation, paths
from turbo.errors import TurboError, UsageError
from turbo.host import Host, nvidia_smi

KERNELS_DIR = paths.repo_root() / "kernels"
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


# --------------------------------------------------------------------------- toolchain
def nvcc() -> str:
    """The CUDA compiler: ``$CUDA_HOME/bin/nvcc`` if set, else ``nvcc`` on PATH."""
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if not found:
        raise TurboError(
            "nvcc",
            "not found on PATH and CUDA_HOME is not set",
            "Install CUDA 13.0 (or run inside `pixi shell`).",
        )
    return found


def cxx() -> str:
    found = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if not found:
        raise TurboError(
            "C++ compiler",
            "neither $CXX, g++ nor c++ was found",
            "Install g++ (Debian: apt-get install g++).",
        )
    return found


def cutlass_include() -> Path:
    """CUTLASS headers from the ``nvidia-cutlass`` wheel (the test reference for E2M1)."""
    import importlib.util

    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise TurboError(
            "CUTLASS headers",
            "the nvidia-cutlass package is not installed",
            "pip install nvidia-cutlass (pyproject group 'kernels').",
        )
    inc = Path(next(iter(spec.submodule_search_locations))) / "source" / "include"
    if not (inc / "cutlass" / "float_subbyte.h").is_file():
        raise TurboError(
            "CUTLASS headers", f"{inc} has no cutlass/float_subbyte.h", "Reinstall nvidia-cutlass."
        )
    return inc


def cuda_include() -> Path:
    """CUDA's include directory for the nvcc in use (CUTLASS host code needs it).

    Looks in $CUDA_HOME, the toolkit around nvcc, $CONDA_PREFIX and /usr/local/cuda, each in
    the standard layout (``include/``) and in conda-forge's (``targets/<triple>/include``, the
    only place conda-forge's CUDA packages put headers).
    """
    homes = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            homes.append(Path(os.environ[var]))
    tool = Path(nvcc())
    homes += [tool.parent.parent, tool.resolve().parent.parent]
    if os.environ.get("CONDA_PREFIX"):
        homes.append(Path(os.environ["CONDA_PREFIX"]))
    homes.append(Path("/usr/local/cuda"))
    found = activation.find_cuda_include(homes)
    if found is None:
        raise TurboError(
            "CUDA headers",
            "cuda_runtime.h is neither in include/ nor in targets/<triple>/include of "
            + ", ".join(dict.fromkeys(str(h) for h in homes)),
            "Set CUDA_HOME to the CUDA 13.0 toolkit (inside pixi it is set for you).",
        )
    return found


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


# --------------------------------------------------------------------------- cached builds
def _digest(sources: Sequence[Path], argv: Sequence[str]) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update("\0".join(argv).encode())
    return h.hexdigest()[:16]


def build_root() -> Path:
    return paths.cache_dir() / "kernels"


def cached_build(
    name: str, sources: Sequence[Path], make_argv: Callable[[Path], list[str]], output: str
) -> Path:
    """Run ``make_argv(tmpdir)`` once per distinct (sources, argv); return the cached output.

    ``make_argv`` gets the directory to write ``output`` into; the digest is computed from the
    argv with a placeholder directory so that it is stable across runs.
    """
    digest = _digest([*sources, HEADER], make_argv(Path("@OUT@")))
    final = build_root() / f"{name}-{digest}"
    target = final / output
    if target.is_file():
        return target
    build_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=build_root()))
    try:
        argv = make_argv(tmp)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        (tmp / "build.log").write_text(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise TurboError(
                f"building {name}",
                f"the compiler failed: {tail[0]}",
                f"See {final}.failed/build.log.",
            )
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


def host_check_library() -> Path:
    """The host build of e2m1.cuh with CUTLASS, as a shared library for ctypes."""
    inc = [f"-I{KERNELS_DIR}", f"-I{cutlass_include()}", f"-I{cuda_include()}"]

    def argv(out: Path) -> list[str]:
        return [
            cxx(),
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


def device_check_binary(arch: str, force_software: bool = False) -> Path:
    """The exhaustive device check (kernels/e2m1_device_check.cu) for one target."""
    defines = ["-DTURBO_E2M1_FORCE_SOFTWARE"] if force_software else []

    def argv(out: Path) -> list[str]:
        return [
            nvcc(),
            "-O3",
            "-std=c++17",
            *gencode(arch),
            *defines,
            f"-I{KERNELS_DIR}",
            str(DEVICE_CHECK_SRC),
            "-o",
            str(out / "e2m1_device_check"),
        ]

    return cached_build(f"e2m1-device-check-{arch}", [DEVICE_CHECK_SRC], argv, "e2m1_device_check")


# --------------------------------------------------------------------------- compile checks
@dataclass(frozen=True)
class CompileResult:
    arch: str
    force_software: bool
    ok: bool
    ptx_has_cvt: bool
    sass_has_cvt: bool | None  # None when no SASS disassembler is available
    message: str


_CVT_PTX = "cvt.rn.satfinite.e2m1x2.f32"
PROBE_KERNEL = """#include "e2m1.cuh"
extern "C" __global__ void turbo_e2m1_compile_probe(const float* x, uint32_t* y) {
  const int i = threadIdx.x;
  y[i] = turbo_e2m1x8(x[8 * i], x[8 * i + 1], x[8 * i + 2], x[8 * i + 3], x[8 * i + 4],
                      x[8 * i + 5], x[8 * i + 6], x[8 * i + 7]) ^ turbo_e2m1x2(x[i], -x[i]);
}
"""


def sass_tool() -> list[str] | None:
    """cuobjdump (system or the nvidia-cuda-cuobjdump wheel) to dump SASS, if any."""
    found = shutil.which("cuobjdump")
    if not found:
        home = Path(nvcc()).resolve().parent
        cand = home / "cuobjdump"
        found = str(cand) if cand.is_file() else None
    if not found:
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        for base in (spec.submodule_search_locations or []) if spec else []:
            for cand in Path(base).glob("cu*/bin/cuobjdump"):
                found = str(cand)
    return [found, "-sass"] if found else None


def compile_check(
    arch: str,
    force_software: bool = False,
    workdir: Path | None = None,
) -> CompileResult:
    """Compile a small kernel using the public API for ``arch``; report whether the E2M1
    instruction appears in its PTX and (when a disassembler exists) its SASS."""
    work = workdir or Path(tempfile.mkdtemp(prefix="e2m1-compile-"))
    src = work / "probe.cu"
    src.write_text(PROBE_KERNEL)
    defines = ["-DTURBO_E2M1_FORCE_SOFTWARE"] if force_software else []
    base = [nvcc(), "-O3", "-std=c++17", *gencode(arch), *defines, f"-I{KERNELS_DIR}"]
    ptx = subprocess.run(
        [*base, "-ptx", str(src), "-o", str(work / "probe.ptx")],
        capture_output=True,
        text=True,
        check=False,
    )
    cubin = subprocess.run(
        [*base, "-cubin", str(src), "-o", str(work / "probe.cubin")],
        capture_output=True,
        text=True,
        check=False,
    )
    if ptx.returncode or cubin.returncode:
        msg = (ptx.stderr + cubin.stderr).strip().splitlines()
        return CompileResult(arch, force_software, False, False, None, msg[-1] if msg else "")
    ptx_text = (work / "probe.ptx").read_text()
    sass_has: bool | None = None
    tool = sass_tool()
    if tool:
        # cuobjdump runs nvdisasm, which the wheels keep next to it, not on PATH.
        env = {**os.environ, "PATH": f"{Path(tool[0]).parent}{os.pathsep}{os.environ['PATH']}"}
        dump = subprocess.run(
            [*tool, str(work / "probe.cubin")], capture_output=True, text=True, check=False, env=env
        )
        if dump.returncode == 0:
            # SASS spells the conversion F2FP.SATFINITE.E2M1.F32... on Blackwell targets.
            sass_has = re.search(r"\bF2FP\.[A-Z0-9_.]*E2M1", dump.stdout) is not None
    return CompileResult(arch, force_software, True, _CVT_PTX in ptx_text, sass_has, "compiled")


# --------------------------------------------------------------------------- GPU facts
def gpu_compute_capability() -> str | None:
    """``"12.1"`` for GPU 0 (via nvidia-smi), or None when there is no usable GPU."""
    smi = nvidia_smi(Host())
    return smi[1] if smi else None


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


# --------------------------------------------------------------------------- probe
@dataclass(frozen=True)
class ProbePlan:
    arch: str
    build_argv: list[str]
    run_argv: list[str]


def probe_plan(arch: str | None = None) -> ProbePlan:
    """What ``kernels.probe`` runs: build the device check for this GPU's target, run it."""
    if arch is None:
        cc = gpu_compute_capability()
        if cc is None:
            raise TurboError(
                "kernels.probe",
                "no NVIDIA GPU is visible (nvidia-smi found none)",
                "Run it on the DGX Spark, or pass --arch to see the plan.",
            )
        arch = arch_for(cc)
    out = Path("<cache>")
    build = [
        nvcc(),
        "-O3",
        "-std=c++17",
        *gencode(arch),
        f"-I{KERNELS_DIR}",
        str(DEVICE_CHECK_SRC),
        "-o",
        str(out / "e2m1_device_check"),
    ]
    return ProbePlan(arch, build, [str(out / "e2m1_device_check")])


def run_probe(plan: ProbePlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (cached) and run the exhaustive device check; return its JSON report."""
    log(f"building the device check for sm_{plan.arch} (cached after the first time)")
    binary = device_check_binary(plan.arch)
    log(f"running all 2^32 inputs on the GPU: {binary}")
    t0 = time.monotonic()
    proc = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise TurboError(
            "kernels.probe",
            f"the device check printed no result "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-200:]}",
            "Check the GPU with `invoke doctor`.",
        )
    report: dict[str, Any] = json.loads(lines[-1])
    if "error" in report:
        raise TurboError(
            "kernels.probe",
            f"CUDA error: {report['error']}",
            "Check the GPU and driver with `invoke doctor`.",
        )
    report["arch"] = plan.arch
    report["exit_code"] = proc.returncode
    report["wall_seconds"] = round(time.monotonic() - t0, 2)
    return report


def render_probe(r: dict[str, Any]) -> str:
    lines = [
        f"GPU: {r['device']} (compute capability {r['cc']}), built for sm_{r['arch']}",
        f"inputs: {r['inputs']} fp32 bit patterns in {r['seconds']} s",
        f"software path on the GPU vs host build: {r['device_sw_vs_host_mismatches']} mismatches",
        f"CUDA __nv_cvt_float_to_fp4 vs software (non-NaN): {r['cuda_vs_sw_nonnan_mismatches']}"
        f" mismatches; on NaN it returns {r['cuda_nan_codes']}",
        f"public API packing checks: {r['api_mismatches']} failures",
    ]
    if r.get("hw_compiled"):
        lines += [
            f"hardware cvt.rn.satfinite.e2m1x2.f32 vs software (non-NaN): "
            f"{r['hw_vs_sw_nonnan_mismatches']} mismatches",
            f"hardware result for NaN inputs (code: count): {r['hw_nan_codes']}"
            + (
                "  = the documented policy (+6, 0x7)"
                if set(r["hw_nan_codes"]) == {"0x7"}
                else "  DIFFERS from the policy (0x7)"
            ),
        ]
    else:
        lines.append(
            f"hardware E2M1 path: absent (sm_{r['arch']} has no "
            "cvt.rn.satfinite.e2m1x2.f32); only the software path ran"
        )
    lines.append("result: " + ("all agree" if r["exit_code"] == 0 else "MISMATCHES (see above)"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- torch extension
def quant_build_dir() -> Path:
    return build_root() / "nvfp4-quant-ext"


def load_quant_extension(verbose: bool = False) -> Any:
    """Build (first call, about a minute) or load the torch extension of nvfp4_quant.cu."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        raise TurboError(
            "NVFP4 quantisation kernel",
            "torch is not installed",
            "Run inside the pixi environment (torch 2.10 cu130).",
        ) from exc
    if not torch.cuda.is_available():
        raise TurboError(
            "NVFP4 quantisation kernel",
            "torch sees no CUDA GPU",
            "Run it on a machine with an NVIDIA GPU.",
        )
    major, minor = torch.cuda.get_device_capability()
    arch = arch_for(f"{major}.{minor}")
    flags = ["-O3", "-std=c++17", *gencode(arch), f"-I{KERNELS_DIR}"]
    name = f"turbo_nvfp4_{arch}_{_digest(list(QUANT_SOURCES), flags)}"
    build_dir = quant_build_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # Only our -gencode: torch would otherwise add its own for every arch in its list.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}{'a' if major >= 10 else ''}")
    return cpp_extension.load(
        name=name,
        sources=[str(QUANT_SOURCES[0]), str(QUANT_SOURCES[2])],
        extra_cflags=["-O2", "-std=c++17", f"-I{KERNELS_DIR}"],
        extra_cuda_cflags=flags,
        build_directory=str(build_dir),
        verbose=verbose,
    )


@dataclass
class Quantized:
    """NVFP4 output: ``data`` [rows, cols/2] uint8 (two codes a byte, element 2i in the low
    nibble), ``sf_swizzled`` [round_up(rows,128), round_up(cols/16,4)] uint8 e4m3 bits in vLLM's
    128x4 layout, ``sf_linear`` [rows, cols/16] uint8 e4m3 bits (or None)."""

    data: Any
    sf_swizzled: Any
    sf_linear: Any


def nvfp4_quantize(
    x: Any,
    global_scale: Any,
    variant: str = "turbo",
    linear: bool = True,
    ext: Any = None,
    layout: str = DEFAULT_LAYOUT,
) -> Quantized:
    """Quantise a 2-D fp16/bf16 CUDA tensor with vLLM 0.16's NVFP4 algorithm."""
    import torch

    if variant not in VARIANTS:
        raise UsageError("variant", f"{variant!r} is unknown", f"Use one of {sorted(VARIANTS)}.")
    if layout not in LAYOUTS:
        raise UsageError("layout", f"{layout!r} is unknown", f"Use one of {sorted(LAYOUTS)}.")
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16) or not x.is_cuda:
        raise UsageError(
            "input",
            f"got {tuple(x.shape)} {x.dtype} on {x.device}",
            "Pass a 2-D float16/bfloat16 CUDA tensor.",
        )
    rows, cols = x.shape
    if cols % 16:
        raise UsageError(
            "input",
            f"{cols} columns is not a multiple of 16",
            "NVFP4 blocks are 16 elements: pad the columns.",
        )
    ext = ext or load_quant_extension()
    x = x.contiguous()
    gs = global_scale.to(device=x.device, dtype=torch.float32).reshape(1).contiguous()
    data = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    kb = cols // 16
    sfs = torch.empty(
        ((rows + 127) // 128 * 128, (kb + 3) // 4 * 4), dtype=torch.uint8, device=x.device
    )
    sfl = torch.empty((rows, kb), dtype=torch.uint8, device=x.device) if linear else None
    ext.quantize(x, gs, data, sfs, sfl, VARIANTS[variant], LAYOUTS[layout])
    return Quantized(data, sfs, sfl)


# --------------------------------------------------------------------------- benchmark
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


def _time_ms(fn: Callable[[], None], iters: int) -> float:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / iters


def _quant_call(
    ext: Any, x: Any, gs: Any, data: Any, sfs: Any, code: int, layout: int
) -> Callable[[], None]:
    def call() -> None:
        ext.quantize(x, gs, data, sfs, None, code, layout)

    return call


def bench_quant(
    rows: int = 16384,
    cols: int = 32768,
    iters: int = 20,
    repeats: int = 3,
    variants: Sequence[str] = ("none", "turbo", "chain", "cuda"),
    dtypes: Sequence[str] = ("bfloat16",),
    log: Callable[[str], None] = print,
    layouts: Sequence[str] = (DEFAULT_LAYOUT,),
) -> BenchResult:
    """Throughput of the quantisation kernel per conversion variant and thread layout, as a
    share of a device-to-device copy moving the same bytes (read + write), on random data.

    Bytes moved per call: the input, the packed output and the swizzled scales (what vLLM's
    kernel writes). Kernel and copy alternate within each repeat (same clocks, same run); the
    best of the repeats is kept for each, since interference only ever slows a run down.
    """
    import torch

    for v in variants:
        if v not in VARIANTS:
            raise UsageError("variant", f"{v!r} is unknown", f"Use one of {sorted(VARIANTS)}.")
    for lay in layouts:
        if lay not in LAYOUTS:
            raise UsageError("layout", f"{lay!r} is unknown", f"Use one of {sorted(LAYOUTS)}.")
    if cols % 16:
        raise UsageError("cols", f"{cols} is not a multiple of 16", "Pick a multiple of 16.")
    ext = load_quant_extension()
    dev = torch.device("cuda")
    n = rows * cols
    kb = cols // 16
    sf_shape = ((rows + 127) // 128 * 128, (kb + 3) // 4 * 4)
    moved = 2 * n + n // 2 + sf_shape[0] * sf_shape[1]
    half = moved // 2
    src = torch.randint(0, 256, (half,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    gen = torch.Generator(device=dev).manual_seed(1234)
    results: list[BenchRow] = []
    copy_best = float("inf")
    combos = [(v, lay) for lay in layouts for v in variants]
    for dname in dtypes:
        dtype = getattr(torch, dname)
        # Random data, spread over the E2M1 range after scaling: never zeros or constants.
        x = torch.randn((rows, cols), generator=gen, device=dev, dtype=torch.float32)
        x = (x * 3).to(dtype)
        gs = torch.tensor([448.0 * 6.0 / float(x.abs().max())], device=dev)
        data = torch.empty((rows, cols // 2), dtype=torch.uint8, device=dev)
        sfs = torch.empty(sf_shape, dtype=torch.uint8, device=dev)
        best = {c: float("inf") for c in combos}
        for rep in range(repeats):
            copy_best = min(copy_best, _time_ms(lambda: dst.copy_(src), iters))
            for v, lay in combos:
                call = _quant_call(ext, x, gs, data, sfs, VARIANTS[v], LAYOUTS[lay])
                best[(v, lay)] = min(best[(v, lay)], _time_ms(call, iters))
            log(
                f"{dname} repeat {rep + 1}/{repeats}: copy {copy_best:.3f} ms, "
                + ", ".join(f"{v}/{lay} {best[(v, lay)]:.3f} ms" for v, lay in combos)
            )
        copy_gbps = 2 * half / copy_best / 1e6
        for v, lay in combos:
            ms = best[(v, lay)]
            gbps = moved / ms / 1e6
            results.append(
                BenchRow(v, lay, dname, round(ms, 4), round(gbps, 1), round(gbps / copy_gbps, 4))
            )
    return BenchResult(
        torch.cuda.get_device_name(0),
        rows,
        cols,
        moved,
        round(copy_best, 4),
        round(2 * half / copy_best / 1e6, 1),
        results,
    )


def render_bench(r: BenchResult) -> str:
    from turbo.console import render_table

    head = (
        f"{r.device}: {r.rows}x{r.cols} input, {r.bytes_moved / 1e9:.3f} GB moved per call; "
        f"D2D copy of the same bytes: {r.copy_ms:.3f} ms = {r.copy_gbps:.0f} GB/s"
    )
    rows = [
        (
            row.dtype,
            row.layout,
            VARIANT_LABELS[row.variant],
            f"{row.ms:.3f}",
            f"{row.gbps:.0f}",
            f"{100 * row.share_of_copy:.1f} %",
        )
        for row in r.table
    ]
    headers = ("dtype", "layout", "conversion", "ms", "GB/s", "share of copy")
    return head + "\n" + render_table(headers, rows)
