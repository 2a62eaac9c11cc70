"""doctor's rows about the environment itself: pixi, CUDA's layout, declared vs installed
versions, and whether this pixi environment holds the built vLLM.

Each row is a plain function of what it reads, so tests hand in values; :func:`rows` reads the
machine (through turbo.host's Host for commands and variables).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from turbo import activation
from turbo import vllm_requirements as vr
from turbo.checks import FAIL, PASS, WARN, Check
from turbo.host import Host, find_cuda_tool

# The packages whose versions decide whether vLLM imports and builds.
WATCHED = (
    "torch",
    "triton",
    "transformers",
    "huggingface-hub",
    "setuptools",
    "flashinfer-python",
    "numba",
)


def _version(text: str) -> Version | None:
    m = re.search(r"\d+(\.\d+)+", text)
    try:
        return Version(m.group(0)) if m else None
    except InvalidVersion:
        return None


def check_pixi_version(found: str | None, required: str) -> Check:
    """``found``: what `pixi --version` printed (None: no pixi); ``required``: requires-pixi."""
    name = "pixi version"
    fix = f"Install pixi {required} (https://pixi.sh; `pixi self-update` upgrades it)."
    if found is None:
        return Check(name, WARN, f"pixi not found (the manifest needs {required})", fix)
    have = _version(found)
    try:
        ok = have is not None and SpecifierSet(required).contains(have, prereleases=True)
    except InvalidSpecifier:
        return Check(name, WARN, f"{found}; requires-pixi {required!r} is unreadable", "")
    if ok:
        return Check(name, PASS, f"{have} ({required})")
    have_text = found.strip() or "unknown"
    return Check(name, FAIL, f"{have_text}: pixi.toml needs {required} (task-arg choices)", fix)


def check_cuda_layout(cuda_home: str | None, conda_prefix: str | None) -> Check:
    """Where vLLM's CMake, cpp_extension and FlashInfer look: $CUDA_HOME/include, lib64
    (without CUDA_HOME, torch takes the toolkit around the nvcc on PATH; so does the caller)."""
    name = "cuda headers"
    if not cuda_home:
        return Check(
            name,
            FAIL,
            "no CUDA_HOME and no nvcc on PATH",
            "Run inside the pixi environment (it sets CUDA_HOME) or export CUDA_HOME.",
        )
    home = Path(cuda_home)
    problems = activation.build_layout_problems(home)
    if not problems:
        target = (home / "include").resolve()
        return Check(name, PASS, f"{home}/include (-> {target}) and lib64")
    elsewhere = activation.find_cuda_include(
        [home] + ([Path(conda_prefix)] if conda_prefix else [])
    )
    where = f"; the headers are in {elsewhere}" if elsewhere else ""
    fix = (
        "Enter the environment through pixi (`pixi run …`, `pixi shell`): its activation "
        "script (scripts/activate-cuda-home.sh) makes the view CUDA_HOME points at."
        if elsewhere
        else "Install the CUDA 13.0 headers (`pixi install`; cuda-cudart-dev)."
    )
    return Check(name, FAIL, f"{home} lacks {', '.join(problems)}{where}", fix)


def check_declared_versions(
    declared: Mapping[str, str], installed: Mapping[str, str], in_pixi: bool
) -> Check:
    """Installed versions of the watched packages against pixi.toml's specifiers."""
    name = "declared vs installed"
    shown, bad = [], []
    for pkg in WATCHED:
        spec = declared.get(pkg)
        have = installed.get(pkg)
        if spec is None:
            continue
        label = f"{pkg} {have or 'missing'}" + (f" ({spec})" if spec else "")
        shown.append(label)
        if have is None:
            bad.append(label)
            continue
        try:
            ok = not spec or SpecifierSet(spec).contains(
                Version(have.split("+")[0]), prereleases=True
            )
        except (InvalidSpecifier, InvalidVersion):
            ok = False
        if not ok:
            bad.append(label)
    if not bad:
        return Check(name, PASS, ", ".join(shown))
    if not in_pixi:
        return Check(
            name,
            WARN,
            "outside pixi: " + ", ".join(bad),
            "Run `invoke doctor` through `pixi run doctor` to check the pixi environment.",
        )
    return Check(
        name,
        FAIL,
        "differ from pixi.toml: " + ", ".join(bad),
        "`pixi install` puts the declared versions back (something installed over them).",
    )


def check_vllm_here(
    environment: str | None, installed: str | None, stamp: Mapping[str, Any] | None
) -> Check | None:
    """Each pixi environment is its own prefix: a vLLM built in `default` is not in `cluster`.
    No row without a successful build (the build row speaks then)."""
    if not stamp or stamp.get("result") != "ok":
        return None
    name = "vllm in this environment"
    built = stamp.get("vllm_version")
    env = environment or "this interpreter"
    if installed and installed == built:
        return Check(name, PASS, f"{installed} in {env}")
    flag = f" -e {environment}" if environment and environment != "default" else ""
    return Check(
        name,
        FAIL,
        f"{env} has vLLM {installed or 'not installed'}, the build stamp says {built}",
        f"`pixi run wheel` then `pixi run{flag} install-wheel .turbo/dist/<the wheel>` (no "
        f"compile), or `pixi run{flag} build-vllm` (ccache makes it minutes).",
    )


def _installed(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[n] = md.version(n)
    return out


def rows(host: Host, stamp: Mapping[str, Any] | None) -> list[Check]:
    manifest = activation.load_manifest()
    required = str(manifest.get("workspace", {}).get("requires-pixi", ">=0"))
    pixi = host.env.get("PIXI_EXE") or host.which("pixi")
    found = None
    if pixi:
        rc, text = host.run([pixi, "--version"])
        found = text if rc == 0 else None
    environment = host.env.get("PIXI_ENVIRONMENT_NAME")
    cuda_home = host.env.get("CUDA_HOME") or host.env.get("CUDA_PATH")
    if not cuda_home:
        nvcc = find_cuda_tool(host, "nvcc")
        cuda_home = str(Path(nvcc).resolve().parent.parent) if nvcc else None
    declared = vr.declared(manifest, environment or "default")
    installed = _installed((*WATCHED, "vllm"))
    out = [
        check_pixi_version(found, required),
        check_cuda_layout(cuda_home, host.env.get("CONDA_PREFIX")),
        check_declared_versions(declared, installed, bool(environment)),
    ]
    here = check_vllm_here(environment, installed.get("vllm"), stamp)
    if here is not None:
        out.append(here)
    return out
