"""CUDA in conda-forge's layout is reachable where every consumer looks, on both platforms.

conda-forge installs CUDA headers and libraries only under ``$CONDA_PREFIX/targets/<triple>/``
(x86_64-linux on linux-64, sbsa-linux on linux-aarch64). vLLM's CMake (torch's FindCUDA and
FindCUDAToolkit), torch's cpp_extension and FlashInfer's JIT read ``$CUDA_HOME/include`` and
``$CUDA_HOME/lib64``. These tests build prefixes in that layout and activate the real pixi.toml
on them (its activation script and variables, through turbo.activation), without pixi. The H200
proof of vLLM's own configure is in docs/build.md ("configure").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from turbo import activation, kernels

TRIPLES = sorted(activation.TARGET_TRIPLES.values())


def conda_forge_prefix(root: Path, triple: str) -> Path:
    """The files that matter, where conda-forge's cuda-* packages put them."""
    p = root / "env"
    (p / "bin").mkdir(parents=True)
    for tool in ("nvcc", "ptxas"):
        (p / "bin" / tool).write_text("#!/bin/sh\nexit 0\n")
        (p / "bin" / tool).chmod(0o755)
    (p / "nvvm" / "libdevice").mkdir(parents=True)
    inc = p / "targets" / triple / "include"
    (inc / "cccl" / "cuda").mkdir(parents=True)
    (inc / "cuda_runtime.h").write_text("/* cuda_runtime */\n")
    (inc / "cuda_fp4.h").write_text("/* cuda_fp4 */\n")
    lib = p / "targets" / triple / "lib"
    (lib / "stubs").mkdir(parents=True)
    (lib / "libcudart.so.13").write_text("")
    (lib / "libcudart.so").symlink_to("libcudart.so.13")
    (p / "lib").mkdir()
    (p / "lib" / "libcudart.so").symlink_to(f"../targets/{triple}/lib/libcudart.so")
    # Every conda environment has include/ for other packages, without CUDA in it.
    (p / "include").mkdir()
    (p / "include" / "zlib.h").write_text("")
    return p


def old_manifest(tmp_path: Path) -> Path:
    """The activation of pixi.toml before the fix (issue 11): CUDA_HOME=$CONDA_PREFIX."""
    m = tmp_path / "old" / "pixi.toml"
    m.parent.mkdir()
    m.write_text(
        '[activation.env]\nCUDA_HOME = "$CONDA_PREFIX"\nCUDA_PATH = "$CONDA_PREFIX"\n'
        'CUDACXX = "$CONDA_PREFIX/bin/nvcc"\nTRITON_PTXAS_PATH = "$CONDA_PREFIX/bin/ptxas"\n'
    )
    return m


@pytest.mark.parametrize("triple", TRIPLES)
def test_headers_and_libraries_reachable_through_cuda_home(tmp_path: Path, triple: str) -> None:
    prefix = conda_forge_prefix(tmp_path, triple)
    env = activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    home = Path(env["CUDA_HOME"])
    assert activation.build_layout_problems(home) == []
    assert env["CUDA_PATH"] == env["CUDA_HOME"]
    assert Path(env["CUDACXX"]) == home / "bin" / "nvcc"
    # The view leads to conda-forge's files, nothing copied.
    assert (home / "include").resolve() == (prefix / "targets" / triple / "include").resolve()
    assert (home / "lib64").resolve() == (prefix / "targets" / triple / "lib").resolve()
    assert (home / "nvvm" / "libdevice").is_dir()
    assert (home / "include" / "cccl" / "cuda").is_dir()
    # Triton's Blackwell assembler (sm_10x/sm_12x) is CUDA 13.0's ptxas of this environment.
    assert env["TRITON_PTXAS_BLACKWELL_PATH"] == str(prefix / "bin" / "ptxas")
    assert Path(env["TRITON_PTXAS_BLACKWELL_PATH"]).is_file()


@pytest.mark.parametrize("triple", TRIPLES)
def test_old_activation_leaves_headers_unreachable(tmp_path: Path, triple: str) -> None:
    """What the check above guards: the manifest before the fix fails it."""
    prefix = conda_forge_prefix(tmp_path, triple)
    env = activation.emulate(prefix, manifest_path=old_manifest(tmp_path),
                             base_env={"PATH": os.environ["PATH"]})
    problems = activation.build_layout_problems(Path(env["CUDA_HOME"]))
    assert problems == ["include/cuda_runtime.h", "lib64/libcudart.so"]
    assert "TRITON_PTXAS_BLACKWELL_PATH" not in env


def test_activation_is_idempotent_and_repairs_a_wrong_link(tmp_path: Path) -> None:
    prefix = conda_forge_prefix(tmp_path, "sbsa-linux")
    env = activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    view = Path(env["CUDA_HOME"])
    (view / "include").unlink()
    (view / "include").symlink_to("/nonexistent")
    activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    assert activation.build_layout_problems(view) == []
    assert sorted(p.name for p in view.iterdir()) == ["bin", "include", "lib64", "nvvm",
                                                       "targets"]


def test_activation_without_cuda_changes_nothing(tmp_path: Path) -> None:
    """A prefix with no CUDA (or no prefix at all) must not fail pixi's activation."""
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    assert not (prefix / "share").exists()


@pytest.mark.parametrize("triple", TRIPLES)
def test_kernels_header_search_finds_conda_forge_layout(
    tmp_path: Path, triple: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """turbo/kernels.py with CUDA_HOME at the raw prefix (no view, e.g. outside pixi)."""
    prefix = conda_forge_prefix(tmp_path, triple)
    monkeypatch.setenv("CUDA_HOME", str(prefix))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    assert kernels.cuda_include() == prefix / "targets" / triple / "include"


# --------------------------------------------------------------------------- real toolchain
def _host_cuda() -> Path | None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    out = subprocess.run([nvcc, "-v", "--dryrun", "-c", "x.cu"], capture_output=True,
                         text=True, check=False).stderr
    for line in out.splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1]).resolve()
    return None


def real_conda_forge_prefix(root: Path, cuda: Path) -> Path:
    """The host's CUDA re-laid as conda-forge does, by links (nothing copied)."""
    triple = "x86_64-linux" if os.uname().machine == "x86_64" else "sbsa-linux"
    inc = cuda / "targets" / triple / "include"
    inc = inc if (inc / "cuda_runtime.h").is_file() else cuda / "include"
    lib = cuda / "targets" / triple / "lib"
    lib = lib if lib.is_dir() else cuda / "lib64"
    p = root / "env"
    (p / "bin").mkdir(parents=True)
    for f in (cuda / "bin").iterdir():
        (p / "bin" / f.name).symlink_to(f.resolve())
    (p / "nvvm").symlink_to((cuda / "nvvm").resolve())
    (p / "targets" / triple).mkdir(parents=True)
    (p / "targets" / triple / "include").symlink_to(inc.resolve())
    (p / "targets" / triple / "lib").symlink_to(lib.resolve())
    (p / "include").mkdir()
    return p


@pytest.mark.skipif(_host_cuda() is None, reason="no nvcc on this machine")
def test_real_nvcc_and_gcc_compile_through_cuda_home(tmp_path: Path) -> None:
    """nvcc as $CUDACXX and the host compiler with -I$CUDA_HOME/include (what cpp_extension
    and FlashInfer pass) both compile against the relaid toolkit."""
    cuda = _host_cuda()
    assert cuda is not None
    prefix = real_conda_forge_prefix(tmp_path, cuda)
    env = activation.emulate(prefix, base_env={"PATH": os.environ["PATH"],
                                               "HOME": os.environ.get("HOME", "/")})
    src = tmp_path / "k.cu"
    src.write_text('#include <cuda_runtime.h>\n#include <cuda_fp4.h>\n'
                   "__global__ void k(float* x) { x[0] = 1.0f; }\n")
    run = subprocess.run([env["CUDACXX"], "-c", str(src), "-o", str(tmp_path / "k.o")],
                         env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    host = tmp_path / "h.cpp"
    host.write_text("#include <cuda_runtime.h>\nint main() { return cudaSuccess; }\n")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx:
        run = subprocess.run([cxx, "-c", str(host), f"-I{env['CUDA_HOME']}/include",
                              "-o", str(tmp_path / "h.o")], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr[-2000:]
    # And without the view, the same host compile cannot find the header.
    run = subprocess.run([cxx or "c++", "-c", str(host), f"-I{prefix}/include", "-o",
                          str(tmp_path / "h2.o")], capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "cuda_runtime.h" in run.stderr


def test_manifest_runs_the_activation_script() -> None:
    manifest = activation.load_manifest(REPO / "pixi.toml")
    scripts = manifest["activation"]["scripts"]
    assert scripts == ["scripts/activate-cuda-home.sh"]
    assert (REPO / scripts[0]).is_file()
    view = "$CONDA_PREFIX/" + activation.CUDA_VIEW.as_posix()
    env = manifest["activation"]["env"]
    assert env["CUDA_HOME"] == env["CUDA_PATH"] == view
    assert env["CUDACXX"] == view + "/bin/nvcc"


def test_activation_survives_set_eu_and_a_blocked_view(tmp_path: Path) -> None:
    """A user's shell may source pixi's activation under `set -eu`; a folder where a link
    should go (made by hand) must not kill it, only leave the row to doctor."""
    prefix = conda_forge_prefix(tmp_path, "x86_64-linux")
    blocked = prefix / activation.CUDA_VIEW / "include"
    (blocked / "something").mkdir(parents=True)
    script = REPO / "scripts" / "activate-cuda-home.sh"
    run = subprocess.run(["bash", "-euc", f'source "{script}"; echo survived'],
                         env={"PATH": os.environ["PATH"], "CONDA_PREFIX": str(prefix)},
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "survived", run.stderr
    view = prefix / activation.CUDA_VIEW
    assert activation.build_layout_problems(view) == ["include/cuda_runtime.h"]
    assert not list(view.glob(".*"))  # no temporary link left behind
