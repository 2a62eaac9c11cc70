"""The build toolchain: find and check every tool a vLLM build needs before it starts.

A build that fails after 40 minutes because ninja is missing is the worst outcome, so every
check runs first and the first failure stops with one line. Probes go through
:class:`turbo.host.Host` so tests can hand in a fake machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from turbo import activation, paths
from turbo.build_types import TARGETS as TARGETS
from turbo.build_types import Toolchain as Toolchain
from turbo.checks import PASS
from turbo.errors import TurboError
from turbo.host import Host, check_ptxas_sm121a, find_cuda_tool
from turbo.pins import Pins

# Reads torch's version and CUDA version without importing torch (which takes seconds): the
# no-op check must stay under two seconds.
TORCH_PROBE = """
import importlib.metadata as md, importlib.util as u, json, os, platform, re, sys
out = {"python": platform.python_version(), "machine": platform.machine(),
       "executable": sys.executable}
try:
    out["torch"] = md.version("torch")
    spec = u.find_spec("torch")
    vfile = os.path.join(os.path.dirname(spec.origin), "version.py")
    m = re.search(r"^cuda[^=]*=\\s*'([^']*)'", open(vfile).read(), re.M)
    out["torch_cuda"] = m.group(1) if m else None
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
try:
    out["vllm"] = md.version("vllm")
except Exception:
    out["vllm"] = None
print(json.dumps(out))
"""

MIN_CMAKE = (3, 26)
# nvcc 13.0 accepts host gcc from 6 up to 15 (its host_config.h); conda-forge builds use 14.
GCC_RANGE = (6, 15)


def _fail(what: str, why: str, fix: str) -> TurboError:
    return TurboError(f"toolchain check ({what})", why, fix)


def probe_python(host: Host, python: str) -> dict[str, str | None]:
    """Facts about the target interpreter and its torch, from a child process."""
    rc, out = host.run([python, "-c", TORCH_PROBE], timeout=60.0)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        data = json.loads(last)
    except ValueError:
        data = None
    if rc != 0 or not isinstance(data, dict):
        raise _fail(
            "python",
            f"{python} did not run ({out.strip()[:200] or f'exit {rc}'})",
            "Run inside the pixi environment (`pixi run build-vllm`) or pass --python.",
        )
    return {str(k): (None if v is None else str(v)) for k, v in data.items()}


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def quick_probe(pins: Pins, *, python: str, target: str, host: Host | None = None) -> Toolchain:
    """Versions only, no verdicts: what the no-op check compares with the stamp (fast)."""
    h = host or Host()
    py = probe_python(h, python)
    nvcc = find_cuda_tool(h, "nvcc") if target == "cuda" else None
    cuda = None
    if nvcc:
        rc, out = h.run([nvcc, "--version"])
        if rc == 0 and "release " in out:
            cuda = out.split("release ", 1)[1].split(",")[0].strip()
    return Toolchain(
        target=target,
        python=python,
        python_version=py.get("python") or "",
        machine=py.get("machine") or "",
        torch=py.get("torch") or "",
        torch_cuda=py.get("torch_cuda"),
        nvcc=nvcc,
        cuda=cuda,
        torch_error=py.get("torch_error"),
        vllm_installed=py.get("vllm"),
    )


def _tool_version(host: Host, tool: str, name: str, fix: str) -> tuple[str, str]:
    path = host.which(tool)
    if not path:
        raise _fail(name, f"`{tool}` is not on PATH", fix)
    rc, out = host.run([path, "--version"])
    if rc != 0:
        raise _fail(name, f"`{path} --version` failed (exit {rc})", fix)
    first = out.strip().splitlines()[0] if out.strip() else ""
    return path, first


def check_toolchain(
    pins: Pins,
    *,
    python: str,
    target: str,
    need_disk_gb: float | None = None,
    host: Host | None = None,
    probed: Toolchain | None = None,
) -> Toolchain:
    """Every check the build needs, in the order a user would fix them; the first failure
    raises :class:`TurboError` with what to do. ``probed``: this command's quick probe, so the
    interpreter and nvcc are asked once."""
    if target not in TARGETS:
        raise TurboError(
            "build target", f"unknown target {target!r}", f"Use one of: {', '.join(TARGETS)}."
        )
    h = host or Host()
    tc = probed or quick_probe(pins, python=python, target=target, host=h)
    if tc.torch_error or not tc.torch:
        raise _fail(
            "torch",
            f"torch is not importable by {python} ({tc.torch_error or 'not installed'})",
            f"Install the pinned torch {pins.toolchain.torch} (the pixi environment has "
            "it: `pixi install`).",
        )
    if target == "cuda":
        _check_torch_pin(tc, pins)
        _check_nvcc(tc, pins)
        _check_cuda_headers(h)
        ptx = check_ptxas_sm121a(h)
        if ptx.status != PASS:
            raise _fail("ptxas", ptx.detail, ptx.fix)
        tc = _check_build_tools(h, tc)
    _check_disk(h, pins.build.disk_gb if need_disk_gb is None else need_disk_gb)
    return tc


def _check_torch_pin(tc: Toolchain, pins: Pins) -> None:
    want_torch, want_cuda = pins.toolchain.torch, pins.toolchain.cuda
    if tc.torch.split("+")[0] != want_torch:
        raise _fail(
            "torch",
            f"torch {tc.torch} is installed, the pin is {want_torch}",
            "Use the pixi environment (`pixi install` restores the pin); a build "
            "against another torch would not load with the pinned one.",
        )
    if tc.torch_cuda != want_cuda:
        built_for = tc.torch_cuda or "none (CPU build)"
        raise _fail(
            "torch",
            f"torch {tc.torch} is built for CUDA {built_for}, want CUDA {want_cuda}",
            f"Install torch from {pins.toolchain.torch_index} (the pixi environment does).",
        )


def _check_nvcc(tc: Toolchain, pins: Pins) -> None:
    want_cuda = pins.toolchain.cuda
    if not tc.nvcc:
        raise _fail(
            "nvcc",
            "nvcc not found (neither $CUDA_HOME/bin nor PATH)",
            "Run inside the pixi environment or set CUDA_HOME to a CUDA 13 toolkit.",
        )
    if not tc.cuda or tc.cuda.split(".")[0] != want_cuda.split(".")[0]:
        raise _fail(
            "nvcc",
            f"{tc.nvcc} is CUDA {tc.cuda or 'unknown'}, want {want_cuda}.x",
            "Point CUDA_HOME at a CUDA 13 toolkit (the pixi environment's).",
        )


def _check_cuda_headers(h: Host) -> None:
    home = h.env.get("CUDA_HOME") or h.env.get("CUDA_PATH")
    missing = activation.build_layout_problems(Path(home)) if home else []
    if home and Path(home).is_dir() and missing:
        # conda-forge's layout without the activation's view: vLLM's CMake would stop at
        # torch's FindCUDA a minute in; say it now, with where the headers are.
        found = activation.find_cuda_include([Path(home)])
        raise _fail(
            "cuda headers",
            f"{home} lacks {', '.join(missing)}, where vLLM's CMake and torch look"
            + (f" (the headers are in {found})" if found else ""),
            "Run through pixi (`pixi run build-vllm`: its activation script makes the "
            "view CUDA_HOME points at) or set CUDA_HOME to a standard-layout CUDA 13.",
        )


def _check_build_tools(h: Host, tc: Toolchain) -> Toolchain:
    """gcc in nvcc's accepted range, cmake new enough, ninja; ccache and cuobjdump if there.
    Returns ``tc`` with the tools found."""
    gcc_path, gcc_line = _tool_version(
        h, "gcc", "gcc", "Install gcc 14 (the pixi environment has it)."
    )
    major = (_version_tuple(gcc_line.split(")")[-1] or gcc_line) or (0,))[0]
    if not GCC_RANGE[0] <= major <= GCC_RANGE[1]:
        raise _fail(
            "gcc",
            f"gcc {major} at {gcc_path}: nvcc {tc.cuda} accepts gcc {GCC_RANGE[0]}-{GCC_RANGE[1]}",
            "Use the pixi environment's gcc 14.",
        )
    cmake_path, cmake_line = _tool_version(
        h, "cmake", "cmake", "Install cmake >= 3.26 (the pixi environment has it)."
    )
    if _version_tuple(cmake_line)[:2] < MIN_CMAKE:
        raise _fail(
            "cmake",
            f"{cmake_line} at {cmake_path} is older than 3.26",
            "Use the pixi environment's cmake.",
        )
    _, ninja_line = _tool_version(
        h,
        "ninja",
        "ninja",
        "Install ninja (the pixi environment "
        "has it); without it the build is serial and has no "
        "progress count.",
    )
    return replace(
        tc,
        gcc=gcc_line,
        cmake=cmake_line,
        ninja=ninja_line,
        ccache=h.which("ccache"),
        cuobjdump=find_cuda_tool(h, "cuobjdump"),
    )


def _check_disk(h: Host, need: float) -> None:
    where = paths.state_dir()
    free = h.disk_free_gb(where)
    if free < need:
        raise _fail(
            "disk",
            f"{free:.0f} GB free at {paths.nearest_existing(where)}, the build "
            f"needs ~{need:.0f} GB",
            "Free space there or move the state directory with TURBO_HOME.",
        )


def installed_vllm(python: str, host: Host | None = None) -> str | None:
    """The vLLM distribution's version in ``python``'s environment (with its local tag)."""
    return probe_python(host or Host(), python).get("vllm")
