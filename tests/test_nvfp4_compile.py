"""vLLM's patched nvfp4_utils.cuh compiles with CUDA 13.0 nvcc for plain sm_121 and sm_121a.

tests/data/nvfp4_utils_driver.cu instantiates every E2M1 entry point of the header (it
declares at::Half / at::BFloat16 so torch is not needed; see its comment). The plain build's
PTX must not contain the E2M1 cvt (ptxas rejects it there); the sm_121a build's must.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from turbo import patching
from turbo.pins import load_pins

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA 13.0) not installed")
DRIVER = Path(__file__).parent / "data" / "nvfp4_utils_driver.cu"
CVT = "cvt.rn.satfinite.e2m1x2.f32"


def nvcc(tree: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [str(NVCC), "-std=c++17", "-I", str(tree / "csrc/quantization/fp4"), *flags,
            str(DRIVER), "-o", str(out)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def patched_tree(tmp_path_factory: pytest.TempPathFactory, vllm_sdist_pristine: Path) -> Path:
    """Only the fp4 headers are needed: copy them, patch the copy with the real series."""
    root = tmp_path_factory.mktemp("nvfp4") / "vllm"
    for rel in ("csrc/quantization/fp4/nvfp4_utils.cuh", "CMakeLists.txt",
                "vllm/model_executor/layers/quantization/modelopt.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vllm_sdist_pristine / rel, root / rel)
    patching.apply_series(root, load_pins().vllm.sdist_version)
    return root


def test_plain_sm121_builds_and_has_no_e2m1_cvt(patched_tree: Path, tmp_path: Path) -> None:
    obj = nvcc(patched_tree, tmp_path / "plain.o", "-c", "-gencode",
               "arch=compute_121,code=sm_121")
    assert obj.returncode == 0, obj.stderr
    ptx = tmp_path / "plain.ptx"
    res = nvcc(patched_tree, ptx, "-ptx", "-arch=compute_121")
    assert res.returncode == 0, res.stderr
    text = ptx.read_text()
    assert ".target sm_121" in text and CVT not in text
    assert "vec16_float2" in text  # the entry points really were compiled


def test_sm121a_builds_with_the_hardware_cvt(patched_tree: Path, tmp_path: Path) -> None:
    obj = nvcc(patched_tree, tmp_path / "a.o", "-c", "-gencode",
               "arch=compute_121a,code=sm_121a")
    assert obj.returncode == 0, obj.stderr
    ptx = tmp_path / "a.ptx"
    res = nvcc(patched_tree, ptx, "-ptx", "-arch=compute_121a")
    assert res.returncode == 0, res.stderr
    assert CVT in ptx.read_text()


def test_unpatched_header_fails_for_plain_sm121(vllm_sdist_pristine: Path, tmp_path: Path) -> None:
    """Why the patch exists: ptxas rejects vLLM's inline cvt for plain sm_121."""
    res = nvcc(vllm_sdist_pristine, tmp_path / "u.o", "-c", "-gencode",
               "arch=compute_121,code=sm_121")
    assert res.returncode != 0
    assert "e2m1x2" in res.stderr and "sm_121" in res.stderr
