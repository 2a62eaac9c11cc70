"""What pixi's activation of this workspace sets, computed without pixi.

pixi activates an environment by exporting ``CONDA_PREFIX`` (and PATH), sourcing the manifest's
``[activation] scripts`` in bash, and exporting ``[activation.env]``, whose values the shell
expands. Tests, the configure proof and ``doctor`` use :func:`emulate` to see the variables a
given prefix would get, so the manifest itself is what gets checked, not a copy of it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turbo import paths, proc
from turbo.errors import TurboError

# CUDA's header/library folder under a conda-forge prefix, per pixi platform.
TARGET_TRIPLES = {"linux-64": "x86_64-linux", "linux-aarch64": "sbsa-linux"}
# The standard-layout CUDA toolkit view that scripts/activate-cuda-home.sh maintains.
CUDA_VIEW = Path("share") / "vllm-turbo" / "cuda"

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    manifest = path or paths.repo_root() / "pixi.toml"
    try:
        return tomllib.loads(manifest.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TurboError(
            f"reading {manifest}", str(exc), "Restore pixi.toml from the repository."
        ) from exc


def activation_tables(manifest: Mapping[str, Any], environment: str = "default") -> list[Any]:
    """The [activation] tables that apply to an environment: the workspace's, then each of its
    features' in order (pixi merges them that way; later entries win)."""
    tables = [manifest.get("activation", {})]
    env = manifest.get("environments", {}).get(environment, {})
    features = env if isinstance(env, list) else env.get("features", [])
    for name in features:
        tables.append(manifest.get("feature", {}).get(name, {}).get("activation", {}))
    return tables


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$VAR`` / ``${VAR}`` as the shell expands them in an export (unset: empty)."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def emulate(
    prefix: Path,
    *,
    manifest_path: Path | None = None,
    environment: str = "default",
    base_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a ``pixi run`` in ``prefix`` would see: activation scripts sourced (they
    may create files inside the prefix, as pixi's do), then [activation.env] exported."""
    manifest_path = manifest_path or paths.repo_root() / "pixi.toml"
    manifest = load_manifest(manifest_path)
    root = manifest_path.parent
    env = dict(os.environ if base_env is None else base_env)
    env.update(
        CONDA_PREFIX=str(prefix),
        PIXI_PROJECT_ROOT=str(root),
        PIXI_ENVIRONMENT_NAME=environment,
        PATH=f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    scripts: list[str] = []
    variables: dict[str, str] = {}
    for table in activation_tables(manifest, environment):
        scripts += [str(root / s) for s in table.get("scripts", [])]
        variables.update({str(k): str(v) for k, v in table.get("env", {}).items()})
    if scripts:
        body = "".join(f'source "{s}" || exit 1\n' for s in scripts)
        body += "env -0\n"
        res = proc.capture(["bash", "-c", body], base_env=env, timeout=None)
        if not res.ok:
            raise TurboError(
                "activation scripts",
                f"{', '.join(scripts)} failed: {(res.stderr.strip() or res.why())[:300]}",
                "Fix the script; pixi would fail the same way.",
            )
        env = dict(item.split("=", 1) for item in res.stdout.split("\0") if "=" in item)
    for key, value in variables.items():
        env[key] = expand(value, env)
    return env


# --------------------------------------------------------------------------- CUDA's layout
def header_candidates(home: Path) -> list[Path]:
    """Where a CUDA toolkit rooted at ``home`` may keep cuda_runtime.h: the standard
    ``include/``, then conda-forge's ``targets/<triple>/include`` (this machine's first)."""
    triples = list(TARGET_TRIPLES.values())
    machine = os.uname().machine
    mine = "sbsa-linux" if machine in ("aarch64", "arm64") else "x86_64-linux"
    triples.sort(key=lambda t: t != mine)
    return [home / "include"] + [home / "targets" / t / "include" for t in triples]


def find_cuda_include(homes: list[Path]) -> Path | None:
    """The first directory holding cuda_runtime.h among the candidates of each home."""
    for home in homes:
        for inc in header_candidates(home):
            if (inc / "cuda_runtime.h").is_file():
                return inc
    return None


def build_layout_problems(home: Path) -> list[str]:
    """What vLLM's CMake (torch's FindCUDA/FindCUDAToolkit), torch's cpp_extension and
    FlashInfer's JIT will not find under CUDA_HOME: they read these exact paths."""
    wanted = {
        "bin/nvcc": home / "bin" / "nvcc",
        "include/cuda_runtime.h": home / "include" / "cuda_runtime.h",
        "lib64/libcudart.so": home / "lib64" / "libcudart.so",
    }
    return [rel for rel, p in wanted.items() if not p.exists()]
