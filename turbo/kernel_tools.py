"""The compilers and tools the kernel builds use, found on this machine.

nvcc from ``$CUDA_HOME`` or PATH, the host C++ compiler, CUDA's headers in either the standard
or conda-forge's layout, CUTLASS's headers from the ``nvidia-cutlass`` wheel (the E2M1
reference), and cuobjdump for SASS (the system's or the ``nvidia-cuda-cuobjdump`` wheel's).
Each one missing is one line saying what to install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from turbo import activation
from turbo.errors import TurboError
from turbo.host import Host, find_cuda_tool


def nvcc() -> str:
    """The CUDA compiler, found where every CUDA tool is found (``host.find_cuda_tool``)."""
    found = find_cuda_tool(Host(), "nvcc")
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


def sass_tool() -> list[str] | None:
    """cuobjdump (system or the nvidia-cuda-cuobjdump wheel) to dump SASS, if any."""
    found = shutil.which("cuobjdump")
    if not found:
        home = Path(nvcc()).resolve().parent
        cand = home / "cuobjdump"
        found = str(cand) if cand.is_file() else None
    if not found:
        spec = importlib.util.find_spec("nvidia")
        for base in (spec.submodule_search_locations or []) if spec else []:
            for cand in Path(base).glob("cu*/bin/cuobjdump"):
                found = str(cand)
    return [found, "-sass"] if found else None
