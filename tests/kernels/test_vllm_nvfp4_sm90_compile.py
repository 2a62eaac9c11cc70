"""Why patch 0003 matters for the H100 test: vLLM 0.16's own NVFP4 quantisation kernel
(csrc/quantization/fp4/nvfp4_quant_kernels.cu), compiled as vLLM's build compiles it but for
sm_90, is rejected by ptxas unpatched (its inline ``cvt ... e2m1x2``) and builds once the series
is applied. Compile only: no GPU needed, but torch's headers and a CUDA toolkit with the
cuBLAS/cuSPARSE/cuSOLVER headers that torch's ATen/cuda headers include.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed (its headers are needed)")
if shutil.which("nvcc") is None:
    pytest.skip("nvcc (CUDA 13.0) not found", allow_module_level=True)

from tests.kernels import vllm_nvfp4 as vn
from turbo.errors import TurboError
from turbo.sdist import unpack_vllm_sdist

KERNEL = vn.VLLM_SOURCES[1]


def _has_cuda_library_headers() -> bool:
    inc = Path(vn.nvcc()).resolve().parent.parent / "include"
    dirs = [inc, *(Path(p) for p in os.environ.get("CPATH", "").split(os.pathsep) if p)]
    return any((d / "cusparse.h").is_file() for d in dirs)


@pytest.fixture(scope="module")
def builds(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    if not _has_cuda_library_headers():
        pytest.skip("the CUDA toolkit here has no cusparse.h (torch's ATen/cuda headers need it)")
    try:
        pristine = unpack_vllm_sdist(tmp_path_factory.mktemp("sdist"))
    except TurboError as exc:
        pytest.skip(f"the vLLM sdist is not available here: {exc}")
    work = tmp_path_factory.mktemp("vllm")
    unpatched = vn.copy_sources(pristine, work / "unpatched")
    patched, applied = vn.patched_copy(pristine, work / "patched")
    assert any(name.startswith("0003-") for name in applied), applied
    # About two minutes each on two cores (torch's headers): run both at once.
    with ThreadPoolExecutor(2) as pool:
        jobs = {
            tag: pool.submit(vn.compile_source, tree, KERNEL, "90", work / f"{tag}.o")
            for tag, tree in (("unpatched", unpatched), ("patched", patched))
        }
        return {tag: job.result() for tag, job in jobs.items()}


def test_unpatched_vllm_kernel_is_rejected_for_sm90(
    builds: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    res = builds["unpatched"]
    assert res.returncode != 0
    assert "Instruction 'cvt with .e2m1x2' not supported on .target 'sm_90'" in res.stderr


def test_patched_vllm_kernel_builds_for_sm90(
    builds: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    res = builds["patched"]
    assert res.returncode == 0, res.stderr[-2000:]
