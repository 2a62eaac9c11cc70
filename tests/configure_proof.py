"""vLLM's own CMake configure against conda-forge's CUDA layout: red before the fix, green after.

Run on a machine with a CUDA-enabled torch, CUDA 13.0, cmake and ninja (the nox session
``configure_proof``; docs/build.md, section "configure", has the recorded run). What it does:

1. Builds a CUDA 13.0 prefix laid out exactly as conda-forge lays it out, from the machine's
   toolkit: ``bin/`` and ``nvvm/`` copied, headers copied to ``targets/<triple>/include``,
   libraries linked file by file into ``targets/<triple>/lib`` and ``lib/``, an unrelated
   ``include/`` (a conda env always has one) and no ``lib64``.
2. Computes the activation environment of that prefix from a manifest with
   :func:`turbo.activation.emulate` (the manifest before the fix, and the current one), and
   removes every other CUDA from PATH and the CUDA search variables.
3. Configures vLLM's real sdist ``CMakeLists.txt`` with the arguments vLLM's setup.py passes
   (``VLLM_TARGET_DEVICE=cuda``, ``TORCH_CUDA_ARCH_LIST=12.1a``), with local copies of the
   sources its CMake would download: pristine tree with the old manifest, pristine tree with
   the new one, the patched tree with the new one.
4. Compiles the GB10 units of the patched tree (Marlin and Marlin-MoE for the 12.x lists,
   NVFP4 quant and GEMM) with ninja from that configured build, i.e. with exactly CMake's
   flags, and records each command.

Everything goes to ``--out``: ``report.json``, one log per configure and compile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from turbo import activation, patching  # noqa: E402

# Binaries nvcc needs (and ptxas for Triton); copied so that nvcc's own path is in the prefix.
CUDA_BINARIES = ("nvcc", "nvcc.profile", "ptxas", "cudafe++", "fatbinary", "nvlink", "bin2c",
                 "cuobjdump", "nvdisasm", "nvprune", "__nvcc_device_query")
# Variables that would let CMake find CUDA by another way than the one under test.
FOREIGN_CUDA_VARS = ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "CUDA_INC_PATH", "CUDA_ROOT",
                     "CUDAToolkit_ROOT", "CUDA_TOOLKIT_ROOT_DIR", "CPATH", "C_INCLUDE_PATH",
                     "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "CMAKE_ARGS", "NVCC_PREPEND_FLAGS",
                     "NVCC_APPEND_FLAGS", "TORCH_CUDA_ARCH_LIST")
# The GB10 translation units (paths in the vLLM tree): what the patch series and the 12.x
# lists decide. One fp16 and one bf16 Marlin template kernel stand for their generated family.
GB10_UNITS = (
    r"csrc/quantization/marlin/sm80_kernel_.*_float16\.cu$",
    r"csrc/quantization/marlin/sm80_kernel_.*_bfloat16\.cu$",
    r"csrc/quantization/marlin/marlin\.cu$",
    r"csrc/moe/marlin_moe_wna16/sm80_kernel_.*\.cu$",
    r"csrc/moe/marlin_moe_wna16/ops\.cu$",
    r"csrc/quantization/fp4/nvfp4_quant_kernels\.cu$",
    r"csrc/quantization/fp4/nvfp4_experts_quant\.cu$",
    r"csrc/quantization/fp4/nvfp4_scaled_mm_sm120_kernels\.cu$",
)
CACHE_KEYS = re.compile(
    r"^(CUDA_TOOLKIT_ROOT_DIR|CUDA_TOOLKIT_INCLUDE|CUDA_INCLUDE_DIRS|CUDAToolkit_INCLUDE_DIR|"
    r"CUDAToolkit_BIN_DIR|CUDA_CUDART_LIBRARY|CUDA_cudart_LIBRARY|CMAKE_CUDA_COMPILER|"
    r"CUDA_NVCC_EXECUTABLE)[:=]"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def triple() -> str:
    return {"x86_64": "x86_64-linux", "aarch64": "sbsa-linux"}[os.uname().machine]


def make_conda_forge_prefix(cuda_root: Path, dest: Path) -> Path:
    """A CUDA prefix in conda-forge's layout, made from a standard toolkit at ``cuda_root``."""
    t = triple()
    src_inc = cuda_root / "targets" / t / "include"
    src_inc = src_inc if src_inc.is_dir() else cuda_root / "include"
    src_lib = cuda_root / "targets" / t / "lib"
    src_lib = src_lib if src_lib.is_dir() else cuda_root / "lib64"
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "bin").mkdir(parents=True)
    for name in CUDA_BINARIES:
        src = cuda_root / "bin" / name
        if src.is_file():
            shutil.copy2(src, dest / "bin" / name)
    if (cuda_root / "bin" / "crt").is_dir():
        shutil.copytree(cuda_root / "bin" / "crt", dest / "bin" / "crt")
    shutil.copytree(cuda_root / "nvvm", dest / "nvvm", symlinks=False)
    tdir = dest / "targets" / t
    shutil.copytree(src_inc, tdir / "include", symlinks=False)
    (tdir / "lib").mkdir(parents=True)
    (dest / "lib").mkdir()
    for lib in sorted(src_lib.iterdir()):
        if lib.is_file():
            (tdir / "lib" / lib.name).symlink_to(lib.resolve())
            if ".so" in lib.name:
                (dest / "lib" / lib.name).symlink_to(Path("..") / "targets" / t / "lib" / lib.name)
        elif lib.is_dir() and lib.name == "stubs":
            shutil.copytree(lib, tdir / "lib" / "stubs")
    # A conda environment always has include/ for other packages (Python's headers among them).
    (dest / "include").mkdir()
    (dest / "include" / "zlib.h").write_text("/* another package's header */\n")
    return dest


def clean_base_env(prefix: Path) -> dict[str, str]:
    """The current environment without any other way to find CUDA."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_CUDA_VARS}
    keep = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not (Path(p) / "nvcc").exists()]
    env["PATH"] = os.pathsep.join(keep)
    return env


def unpack(tarball: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python < 3.11.4: no extraction filters (our own tarballs)
            tf.extractall(dest)
    (tree,) = [p for p in dest.iterdir() if p.is_dir()]
    return tree


EXTRA_CMAKE_ARGS: list[str] = []


def cmake_args(tree: Path, build: Path, env: dict[str, str], jobs: int) -> list[str]:
    """What vLLM 0.16's setup.py (cmake_build_ext.configure) passes, plus compile_commands."""
    return [
        "cmake", str(tree), "-G", "Ninja",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DVLLM_TARGET_DEVICE=cuda",
        f"-DVLLM_PYTHON_EXECUTABLE={sys.executable}",
        f"-DVLLM_PYTHON_PATH={':'.join(sys.path)}",
        f"-DFETCHCONTENT_BASE_DIR={build.parent / 'fetchcontent'}",
        "-DNVCC_THREADS=2",
        "-DCMAKE_JOB_POOL_COMPILE:STRING=compile",
        f"-DCMAKE_JOB_POOLS:STRING=compile={jobs}",
        f"-DCMAKE_CUDA_COMPILER={env['CUDA_HOME']}/bin/nvcc",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        *EXTRA_CMAKE_ARGS,
    ]


def configure(name: str, tree: Path, env: dict[str, str], work: Path, out: Path,
              deps: dict[str, str], jobs: int) -> dict[str, Any]:
    build = work / f"build-{name}"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    run_env = {**env, **deps, "VLLM_TARGET_DEVICE": "cuda"}
    argv = cmake_args(tree, build, run_env, jobs)
    log(f"configure {name}: {' '.join(argv[:2])} ...")
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=build, env=run_env, capture_output=True, text=True,
                          check=False)
    text = proc.stdout + proc.stderr
    (out / f"configure-{name}.log").write_text(text)
    cache = build / "CMakeCache.txt"
    found = [ln for ln in cache.read_text().splitlines() if CACHE_KEYS.match(ln)] \
        if cache.exists() else []
    keep = re.compile(r"(Could NOT find|CMake Error|cannot find the CUDA|Found CUDA|"
                      r"CUDA target arch|Building (Marlin|NVFP4)|Configuring done|"
                      r"Generating done|Build files have been written|Not building|FATAL)")
    result = {
        "name": name, "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
        "argv": argv, "env": {k: run_env[k] for k in sorted(run_env)
                              if k in FOREIGN_CUDA_VARS or k.endswith("_SRC_DIR")},
        "key_lines": [ln for ln in text.splitlines() if keep.search(ln)][:60],
        "cache": found, "build": str(build),
    }
    log(f"configure {name}: rc={proc.returncode} in {result['seconds']} s")
    return result


# Runtime JIT as torch.utils.cpp_extension (and FlashInfer, the same way) does it: the host
# source includes a CUDA header (-I$CUDA_HOME/include) and the link takes -L$CUDA_HOME/lib64.
JIT_CUDA = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>
__global__ void add1(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}
void add_one(torch::Tensor x) {
  int n = x.numel();
  add1<<<(n + 255) / 256, 256>>>(x.data_ptr<float>(), n);
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "launch failed");
}
"""
JIT_PROBE = """
import sys, torch
from torch.utils.cpp_extension import CUDA_HOME, load_inline
m = load_inline(name="turbo_jit_probe_" + sys.argv[2],
                cpp_sources="#include <cuda_runtime.h>\\nvoid add_one(torch::Tensor x);",
                cuda_sources=open(sys.argv[3]).read(), functions=["add_one"],
                build_directory=sys.argv[1], verbose=True)
x = torch.zeros(4096, device="cuda")
m.add_one(x)
torch.cuda.synchronize()
print("JIT OK: CUDA_HOME", CUDA_HOME, "sum", float(x.sum()))
"""


def jit_check(name: str, env: dict[str, str], work: Path, out: Path) -> dict[str, Any]:
    """torch's cpp_extension JIT under an activation; the kernel runs on this machine's GPU
    (TORCH_CUDA_ARCH_LIST is set to this GPU, not GB10's 12.1a, so the result can run)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    build = work / f"jit-{name}"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    src = work / "jit_probe.cu"
    src.write_text(JIT_CUDA)
    run_env = {**env, "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "MAX_JOBS": "4"}
    log(f"jit {name}: torch.utils.cpp_extension.load_inline")
    argv = [sys.executable, "-c", JIT_PROBE, str(build), name.replace("-", "_"), str(src)]
    proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, check=False,
                          timeout=600)
    text = proc.stdout + proc.stderr
    (out / f"jit-{name}.log").write_text(text)
    keep = re.compile(r"(JIT OK|error|cannot find|No such file|fatal)", re.IGNORECASE)
    log(f"jit {name}: rc={proc.returncode}")
    return {"name": name, "rc": proc.returncode, "cuda_home": env.get("CUDA_HOME"),
            "key_lines": [ln for ln in text.splitlines() if keep.search(ln)][:12]}


def compile_units(build: Path, out: Path, timeout: float, jobs: int) -> dict[str, Any]:
    db = json.loads((build / "compile_commands.json").read_text())
    chosen: list[dict[str, Any]] = []
    for pattern in GB10_UNITS:
        hits = sorted((e for e in db if re.search(pattern, e["file"])), key=lambda e: e["file"])
        if hits:
            chosen.append(hits[0])
        else:
            chosen.append({"file": pattern, "missing": True})
    units = []
    for e in chosen:
        if e.get("missing"):
            units.append({"file": e["file"], "missing": True})
            continue
        cmd = e.get("command") or " ".join(e.get("arguments", []))
        output = Path(e["output"])
        if output.is_absolute():
            output = output.relative_to(build)
        units.append({
            "file": e["file"], "output": str(output), "command": cmd,
            "gencode": re.findall(r"-gencode[= ]arch=\S+", cmd),
        })
    outputs = [u["output"] for u in units if "output" in u]
    argv = ["ninja", "-C", str(build), f"-j{jobs}", "-k", "0", *outputs]
    log(f"compile {len(outputs)} GB10 units with ninja -j{jobs}")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    (out / "compile.log").write_text(text)
    for u in units:
        if "output" in u:
            obj = build / u["output"]
            u["built"] = obj.is_file()
            u["bytes"] = obj.stat().st_size if obj.is_file() else 0
    log(f"compile: rc={rc} in {time.monotonic() - t0:.0f} s")
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "argv": argv, "units": units,
            "errors": [ln for ln in text.splitlines() if "error" in ln.lower()][:30]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, default=None,
                    help="vLLM 0.16.0 source tarball (default: the cached release sdist, "
                    "downloaded from the package index once)")
    ap.add_argument("--deps", type=Path, default=None,
                    help="tarball or folder with cutlass/ flash-attention/ flashmla/ qutlass/ "
                    "(default: vLLM's CMake downloads them)")
    ap.add_argument("--before-manifest", type=Path,
                    default=REPO / "tests" / "data" / "pixi-before-issue-11.toml",
                    help="pixi.toml as it was before the fix (default: the recorded copy)")
    ap.add_argument("--manifest", type=Path, default=REPO / "pixi.toml")
    ap.add_argument("--cuda-root", type=Path, default=Path("/usr/local/cuda"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/vllm-turbo-configure-proof"))
    ap.add_argument("--out", type=Path, default=REPO / ".turbo" / "configure-proof")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--compile-timeout", type=float, default=420.0)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--cmake-arg", action="append", default=[],
                    help="extra argument for every configure (recorded in the report)")
    ap.add_argument("--compile-only", type=Path, default=None, metavar="BUILD",
                    help="only compile the GB10 units in an already configured build folder")
    ap.add_argument("--jit-only", action="store_true",
                    help="only the runtime-JIT check (torch cpp_extension), before and after")
    args = ap.parse_args()
    EXTRA_CMAKE_ARGS.extend(args.cmake_arg)
    if args.jit_only:
        args.out.mkdir(parents=True, exist_ok=True)
        prefix = make_conda_forge_prefix(args.cuda_root.resolve(), args.work / "jit-prefix")
        base = clean_base_env(prefix)
        envs = {
            "before": activation.emulate(prefix, manifest_path=args.before_manifest,
                                         base_env=base),
            "after": activation.emulate(prefix, manifest_path=args.manifest, base_env=base),
        }
        results = [jit_check(n, e, args.work, args.out) for n, e in envs.items()]
        (args.out / "jit.json").write_text(json.dumps(results, indent=1))
        return 0 if results[0]["rc"] != 0 and results[1]["rc"] == 0 else 1
    if args.compile_only:
        args.out.mkdir(parents=True, exist_ok=True)
        result = compile_units(args.compile_only, args.out, args.compile_timeout, args.jobs)
        (args.out / "compile.json").write_text(json.dumps(result, indent=1))
        return 0 if result["rc"] == 0 else 1
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"host": os.uname().nodename, "machine": os.uname().machine}

    log(f"conda-forge layout prefix from {args.cuda_root}")
    prefix = make_conda_forge_prefix(args.cuda_root.resolve(), args.work / "prefix")
    report["prefix_tree"] = sorted(
        str(p.relative_to(prefix)) for p in prefix.glob("*")) + sorted(
        str(p.relative_to(prefix)) for p in prefix.glob("targets/*/*"))
    deps: dict[str, str] = {}
    if args.deps is not None:
        deps_dir = args.deps
        if args.deps.is_file():
            deps_dir = unpack(args.deps, args.work / "deps-unpacked")
        # triton_kernels only adds an install rule for .py files (configure reads nothing in
        # it), and the Triton repository is too large to carry: a folder with no .py file
        # switches the download off for this check (FetchContent wants it non-empty).
        (args.work / "triton_kernels").mkdir(exist_ok=True)
        (args.work / "triton_kernels" / "README").write_text(
            "Deliberately empty: the configure proof does not install triton_kernels.\n")
        deps = {
            "VLLM_CUTLASS_SRC_DIR": str(deps_dir / "cutlass"),
            "VLLM_FLASH_ATTN_SRC_DIR": str(deps_dir / "flash-attention"),
            "FLASH_MLA_SRC_DIR": str(deps_dir / "flashmla"),
            "QUTLASS_SRC_DIR": str(deps_dir / "qutlass"),
            "TRITON_KERNELS_SRC_DIR": str(args.work / "triton_kernels"),
        }
    if args.sdist is None:
        from turbo.sdist import vllm_sdist

        args.sdist = vllm_sdist("0.16.0")
    pristine = unpack(args.sdist, args.work / "pristine")
    patched = unpack(args.sdist, args.work / "patched")
    rep = patching.apply_series(patched, "0.16.0")
    report["patches"] = {"applied": rep.applied, "skipped": rep.skipped}
    log(f"patched tree: applied {rep.applied}, skipped {rep.skipped}")

    base = clean_base_env(prefix)
    env_before = activation.emulate(prefix, manifest_path=args.before_manifest, base_env=base)
    env_after = activation.emulate(prefix, manifest_path=args.manifest, base_env=base)
    report["torch"] = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
        capture_output=True, text=True, check=False).stdout.strip()
    report["cmake"] = subprocess.run(["cmake", "--version"], capture_output=True, text=True,
                                     check=False).stdout.splitlines()[0]
    runs = [
        ("pristine-before", pristine, env_before),
        ("pristine-after", pristine, env_after),
        ("patched-after", patched, env_after),
    ]
    report["configure"] = [configure(n, t, e, args.work, args.out, deps, args.jobs)
                           for n, t, e in runs]
    green = report["configure"][2]
    if green["rc"] == 0 and not args.skip_compile:
        report["compile"] = compile_units(Path(green["build"]), args.out, args.compile_timeout,
                                          args.jobs)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    ok = [c["rc"] for c in report["configure"]]
    log(f"configure rc: {ok}; report {args.out / 'report.json'}")
    return 0 if ok[0] != 0 and ok[1] == 0 and ok[2] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
