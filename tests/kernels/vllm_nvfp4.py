"""vLLM's own NVFP4 quantisation kernel, built from the vLLM sdist for a target without the E2M1
instruction (sm_90), and vLLM's own Python reference for it.

Used by test_vllm_nvfp4_gpu.py (GPU) and test_vllm_nvfp4_sm90_compile.py (compile only).

What is vLLM's and what is ours:
- compiled unchanged from the (patched) sdist: csrc/quantization/fp4/nvfp4_quant_entry.cu (the
  ``scaled_fp4_quant`` dispatcher), nvfp4_quant_kernels.cu (the kernel and its launcher),
  nvfp4_utils.cuh (+ turbo_e2m1.cuh from patch 0003) and csrc/cuda_utils_kernels.cu;
- ours: kernels/vllm_nvfp4_ext.cpp (a pybind11 binding, because vLLM's TORCH_LIBRARY file
  registers every kernel of the project) and kernels/vllm_nvfp4_rcp.cu (vLLM's
  ``reciprocal_approximate_ftz`` as an op, for the bit-exact comparison);
- the reference is vLLM's ``ref_nvfp4_quant`` from
  vllm/model_executor/layers/quantization/utils/nvfp4_emulation_utils.py, executed from the
  sdist's file (its one vLLM import, ``vllm.scalar_type``, is the sdist's own module too).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from turbo import patching, paths
from turbo.pins import load_pins

REPO = paths.repo_root()
FP4 = "csrc/quantization/fp4"
VLLM_SOURCES = (
    f"{FP4}/nvfp4_quant_entry.cu",
    f"{FP4}/nvfp4_quant_kernels.cu",
    "csrc/cuda_utils_kernels.cu",
)
OUR_SOURCES = (REPO / "kernels" / "vllm_nvfp4_ext.cpp", REPO / "kernels" / "vllm_nvfp4_rcp.cu")
EMULATION = "vllm/model_executor/layers/quantization/utils/nvfp4_emulation_utils.py"
SCALAR_TYPE = "vllm/scalar_type.py"
CVT_E2M1 = "cvt.rn.satfinite.e2m1x2.f32"


def vllm_gpu_flags(arch: str) -> list[str]:
    """The nvcc flags vLLM 0.16's CMake gives its NVFP4 sources in a GB10 build, target swapped.

    - ``get_torch_gpu_compiler_flags`` (cmake/utils.cmake) takes torch's COMMON_NVCC_FLAGS,
      adds ``-DENABLE_FP8`` and, for CUDA >= 12, REMOVES the four ``__CUDA_NO_HALF*`` defines:
      torch's cpp_extension adds them back, so they are undefined again here;
    - ``-DENABLE_NVFP4_SM120=1`` is what CMakeLists.txt appends to VLLM_GPU_FLAGS when the
      ``12.0f`` FP4 list is non-empty, as it is for TORCH_CUDA_ARCH_LIST=12.1a (GB10). It is a
      build switch, not an arch guard in device code: it makes nvfp4_quant_entry.cu dispatch to
      the kernel (else it raises "No compiled nvfp4 quantization kernel") and keeps the 8-element
      layout that GB10 runs. ``ENABLE_NVFP4_SM100`` is NOT set (a GB10 build does not set it; it
      selects 256-bit loads that only sm_100 has);
    - C++17 as vLLM's CMake (CMAKE_CXX_STANDARD 17); ``-gencode`` for the one target.
    """
    return [
        "-O3",
        "-std=c++17",
        "-gencode",
        f"arch=compute_{arch},code=sm_{arch}",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_HALF2_OPERATORS__",
        "-DENABLE_FP8",
        "-DENABLE_NVFP4_SM120=1",
    ]


def copy_sources(pristine: Path, dest: Path) -> Path:
    """Copy what the build and the series need (csrc/, the series' files, the reference's
    Python files) from an unpacked sdist to ``dest``; return ``dest``."""
    shutil.copytree(pristine / "csrc", dest / "csrc")
    wanted = {EMULATION, SCALAR_TYPE}
    wanted |= {f.old for p in patching.load_series() for f in p.files if f.old}
    for rel in sorted(wanted):
        if (pristine / rel).is_file() and not (dest / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pristine / rel, dest / rel)
    return dest


def patched_copy(pristine: Path, dest: Path) -> tuple[Path, list[str]]:
    """A copy of the sources with our series applied by the patch engine; returns the tree and
    the names of the patches applied."""
    tree = copy_sources(pristine, dest)
    report = patching.apply_series(tree, load_pins().vllm.sdist_version)
    return tree, report.applied


def torch_include_dirs() -> list[Path]:
    from torch.utils import cpp_extension

    return [Path(p) for p in cpp_extension.include_paths()]


def nvcc() -> str:
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc") or "nvcc"


def compile_argv(tree: Path, source: str, arch: str, out: Path, *, ptx: bool = False) -> list[str]:
    """nvcc argv compiling one vLLM source of ``tree`` as vLLM's build would (plus torch's
    own extension flags, which vLLM's build also passes)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    inc = [f"-I{tree / 'csrc'}", f"-I{tree / FP4}", *(f"-I{p}" for p in torch_include_dirs())]
    mode = ["-ptx"] if ptx else ["-c"]
    flags = vllm_gpu_flags(arch)
    if ptx:
        flags = [f for f in flags if not f.startswith("arch=")]
        flags = [f for f in flags if f != "-gencode"] + [f"-arch=compute_{arch}"]
    return [nvcc(), *COMMON_NVCC_FLAGS, *flags, *inc, *mode, str(tree / source), "-o", str(out)]


def compile_source(
    tree: Path, source: str, arch: str, out: Path, *, ptx: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = compile_argv(tree, source, arch, out, ptx=ptx)
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _digest(files: list[Path], flags: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


def load_extension(tree: Path, arch: str, *, verbose: bool = False) -> Any:
    """Build (once per sources + flags, cached under <cache>/kernels) and load vLLM's kernel."""
    from torch.utils import cpp_extension

    flags = vllm_gpu_flags(arch)
    fp4 = tree / FP4
    headers = sorted([*fp4.glob("*.cuh"), *(tree / "csrc").glob("*.h")])
    sources = [*(tree / s for s in VLLM_SOURCES), *OUR_SOURCES]
    name = f"vllm_nvfp4_sm{arch}_{_digest([*sources, *headers], flags)}"
    build_dir = paths.cache_dir() / "kernels" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        # A -gencode in the CUDA flags stops torch from adding its own arch list.
        extra_cuda_cflags=flags,
        extra_cflags=["-O2", "-std=c++17"],
        extra_include_paths=[str(tree / "csrc"), str(fp4)],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def load_reference(tree: Path) -> types.ModuleType:
    """vLLM's nvfp4_emulation_utils module, executed from the sdist's file.

    A bare ``vllm`` package object (no __init__ code, __path__ = the sdist's vllm/) lets its
    ``from vllm.scalar_type import scalar_types`` load the sdist's own scalar_type.py without
    importing the rest of vLLM (its dependencies are not installed here). sys.modules is
    restored afterwards.
    """
    saved = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    pkg = types.ModuleType("vllm")
    pkg.__path__ = [str(tree / "vllm")]
    sys.modules["vllm"] = pkg
    try:
        for k in [k for k in sys.modules if k.startswith("vllm.")]:
            del sys.modules[k]
        importlib.import_module("vllm.scalar_type")
        spec = importlib.util.spec_from_file_location(
            "vllm_sdist_nvfp4_emulation_utils", tree / EMULATION
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
            del sys.modules[k]
        sys.modules.update(saved)
