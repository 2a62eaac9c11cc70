"""vLLM's requirement files against what pixi.toml declares: pixi owns every package vLLM needs.

pixi resolves and installs its PyPI set on its own, and on its next install puts back any
package that pip changed. So build-vllm must not pip-install vLLM's requirements into the
environment: pixi.toml declares them (its [pypi-dependencies]), vLLM itself is installed with
``--no-deps``, and this module names any requirement of the tree being built that the
declaration or the installed set does not meet.

Markers are evaluated for the target (Linux, CPython 3.12, x86_64 or aarch64), not for the
interpreter running the check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from turbo import proc
from turbo.errors import TurboError

# torch and its companions: pixi pins torch (CUDA 13.0 index); vLLM's use_existing_torch.py
# strips these from the files.
TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio"})
# Provided by the conda side of the environment, not by PyPI.
CONDA_PROVIDED = frozenset({"cmake"})
# The files that matter for a CUDA build: runtime (common + cuda) and build.
RUNTIME_FILES = ("requirements/cuda.txt",)
BUILD_FILES = ("requirements/build.txt",)
PLATFORM_MACHINES = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
TARGET_PYTHON = "3.12"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_env(platform: str, python: str = TARGET_PYTHON) -> dict[str, str]:
    """PEP 508 marker variables of the target environment (a pixi platform)."""
    machine = PLATFORM_MACHINES[platform]
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "linux",
        "extra": "",
    }


def read_requirement_file(path: Path, _seen: frozenset[Path] = frozenset()) -> list[Requirement]:
    """Requirements of a pip requirements file, following ``-r`` includes; comments dropped."""
    path = path.resolve()
    if path in _seen:
        return []
    out: list[Requirement] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TurboError(
            f"reading {path}", str(exc), "Is this a vLLM source tree (requirements/)?"
        ) from exc
    for raw in lines:
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            include = path.parent / line.split(None, 1)[1].strip()
            out += read_requirement_file(include, _seen | {path})
            continue
        if line.startswith("-"):
            continue  # pip options (-c, --extra-index-url …) carry no requirement
        try:
            out.append(Requirement(line))
        except InvalidRequirement as exc:
            raise TurboError(
                f"{path.name}: {line!r}", f"not a requirement ({exc})", "Check the tree."
            ) from exc
    return out


def tree_requirements(
    tree: Path, files: Iterable[str] = RUNTIME_FILES + BUILD_FILES
) -> list[Requirement]:
    """vLLM's requirements for a CUDA build, less the torch family and conda's tools."""
    seen: dict[str, Requirement] = {}
    for rel in files:
        for req in read_requirement_file(tree / rel):
            name = normalize(req.name)
            if name in TORCH_FAMILY or name in CONDA_PROVIDED:
                continue
            key = f"{name}[{','.join(sorted(req.extras))}];{req.marker}"
            seen.setdefault(key, req)
    return list(seen.values())


def applies(req: Requirement, platform: str, extra: str = "") -> bool:
    if req.marker is None:
        return not extra
    env = {**marker_env(platform), "extra": extra}
    return bool(req.marker.evaluate(env))


# --------------------------------------------------------------------------- the declaration
def declared(manifest: Mapping[str, Any], environment: str = "default") -> dict[str, str]:
    """normalized name -> the PEP 440 specifier pixi.toml declares for an environment (the
    workspace's [pypi-dependencies] plus its features'; "" for any version)."""
    tables = [manifest.get("pypi-dependencies", {})]
    env = manifest.get("environments", {}).get(environment, {})
    features = env if isinstance(env, list) else env.get("features", [])
    for name in features:
        tables.append(manifest.get("feature", {}).get(name, {}).get("pypi-dependencies", {}))
    out: dict[str, str] = {}
    for table in tables:
        for name, spec in table.items():
            version = spec if isinstance(spec, str) else spec.get("version", "")
            out[normalize(name)] = "" if version in ("*", None) else str(version)
    return out


def declared_requirements(manifest: Mapping[str, Any], environment: str = "default") -> list[str]:
    """The declaration as pip requirement strings (what a resolver is given, as pixi would)."""
    tables = [manifest.get("pypi-dependencies", {})]
    env = manifest.get("environments", {}).get(environment, {})
    features = env if isinstance(env, list) else env.get("features", [])
    for feat in features:
        tables.append(manifest.get("feature", {}).get(feat, {}).get("pypi-dependencies", {}))
    reqs: dict[str, str] = {}
    for table in tables:
        for name, spec in table.items():
            if isinstance(spec, dict) and ("path" in spec or "git" in spec or "url" in spec):
                continue  # the project itself and other local sources
            version = spec if isinstance(spec, str) else spec.get("version", "")
            extras = spec.get("extras", []) if isinstance(spec, dict) else []
            text = name + (f"[{','.join(extras)}]" if extras else "")
            reqs[normalize(name)] = text + ("" if version in ("*", "", None) else str(version))
    return list(reqs.values())


# --------------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Difference:
    name: str
    kind: str  # "undeclared", "missing", "version", "declared-range"
    detail: str

    def text(self) -> str:
        return f"{self.name} ({self.detail})"


RequiresOf = Callable[[str], list[str]]


def differences(
    requirements: Iterable[Requirement],
    platform: str,
    *,
    declared_specs: Mapping[str, str] | None,
    installed: Mapping[str, str],
    requires_of: RequiresOf | None = None,
) -> list[Difference]:
    """Each requirement (and each requirement its extras add) that the declaration or the
    installed set does not meet. ``declared_specs`` None: check the installed set only."""
    out: list[Difference] = []
    for req in requirements:
        if not applies(req, platform):
            continue
        name = normalize(req.name)
        if declared_specs is not None and name not in declared_specs:
            out.append(Difference(name, "undeclared", f"needs {req}, pixi.toml has none"))
            continue
        have = installed.get(name)
        if have is None:
            out.append(Difference(name, "missing", f"needs {req}, not installed"))
            continue
        if req.specifier and not _satisfies(req, have):
            out.append(Difference(name, "version", f"{have} installed, needs {req.specifier}"))
        if req.extras and requires_of is not None:
            extra_reqs = []
            for text in requires_of(name):
                sub = Requirement(text)
                if sub.marker is not None and any(
                    applies(sub, platform, extra=e) for e in req.extras
                ):
                    sub.marker = None
                    extra_reqs.append(sub)
            out += differences(extra_reqs, platform, declared_specs=None, installed=installed)
    return out


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def one_line(diffs: list[Difference]) -> str:
    kinds = {
        "undeclared": "not declared in pixi.toml",
        "missing": "not installed",
        "version": "installed outside the tree's range",
    }
    parts = []
    for kind, label in kinds.items():
        names = [d.text() for d in diffs if d.kind == kind]
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- installed set
# Run in the target interpreter: every distribution it sees, with its requirements.
PROBE_TIMEOUT_S = 300.0
INSTALLED_PROBE = """
import importlib.metadata as m, json
out = {}
for d in m.distributions():
    n = d.metadata["Name"]
    if n and n not in out:
        out[n] = [d.version, list(d.requires or [])]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Installed:
    """What an interpreter has installed: normalized name -> version and -> requirements."""

    versions: dict[str, str]
    requires: dict[str, list[str]]

    def requires_of(self, name: str) -> list[str]:
        return self.requires.get(normalize(name), [])


def probe_installed(python: str) -> Installed:
    res = proc.capture([python, "-c", INSTALLED_PROBE], timeout=PROBE_TIMEOUT_S)
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        said = (res.error or res.stderr).strip()[:200]
        raise TurboError(
            "listing installed packages",
            f"{python} did not answer ({said or res.rc})",
            "Run inside the pixi environment or pass --python.",
        ) from exc
    versions = {normalize(k): str(v[0]) for k, v in data.items()}
    requires = {normalize(k): [str(r) for r in v[1]] for k, v in data.items()}
    return Installed(versions, requires)


def current_platform(machine: str) -> str:
    return "linux-aarch64" if machine in ("aarch64", "arm64") else "linux-64"
