"""pixi.toml's default environment meets every requirement of the pinned vLLM release.

pixi resolves its PyPI set on its own; here pip resolves the same declaration on its own
(``pip install --dry-run --report``, for Linux x86_64 and aarch64, CPython 3.12, wheels only,
torch held at the pin from the default index), and every requirement of the release sdist's
``requirements/cuda.txt`` (with ``common.txt``) and ``build.txt`` is checked against the result,
extras included. Resolutions are cached per machine under the vllm-turbo cache.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO
from turbo import paths
from turbo import vllm_requirements as vr

FILES = ("requirements/cuda.txt", "requirements/build.txt")
# pixi's default glibc floor for linux platforms is 2.28: every older manylinux tag is accepted.
GLIBC_MINORS = (28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17)


def manifest() -> dict[str, Any]:
    return tomllib.loads((REPO / "pixi.toml").read_text())


def platform_args(platform: str) -> list[str]:
    machine = vr.PLATFORM_MACHINES[platform]
    tags = [f"manylinux_2_{m}_{machine}" for m in GLIBC_MINORS]
    tags += [f"manylinux2014_{machine}", f"linux_{machine}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def resolve(requirements: list[str], platform: str) -> dict[str, Any]:
    """pip's resolution of ``requirements`` for the target, cached by its inputs."""
    import pip

    key = hashlib.sha256(
        json.dumps([sorted(requirements), platform, vr.TARGET_PYTHON, pip.__version__]).encode()
    ).hexdigest()[:20]
    cache = paths.cache_dir() / "pip-resolve" / f"{platform}-{key}.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--disable-pip-version-check", "--target", str(Path(tmp) / "t"),
            "--report", str(report), "--only-binary=:all:",
            "--python-version", vr.TARGET_PYTHON, *platform_args(platform), *requirements,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
            pytest.fail(f"pip cannot resolve pixi.toml's PyPI set for {platform}: "
                        f"{' | '.join(errors[-3:]) or proc.stderr[-500:]}")
        data = json.loads(report.read_text())
    tmp_cache = cache.with_suffix(".tmp")
    tmp_cache.write_text(json.dumps(data))
    tmp_cache.replace(cache)
    return dict(data)


def resolved_set(report: dict[str, Any]) -> vr.Installed:
    versions, requires = {}, {}
    for item in report["install"]:
        meta = item["metadata"]
        name = vr.normalize(meta["name"])
        versions[name] = meta["version"]
        requires[name] = list(meta.get("requires_dist") or [])
    return vr.Installed(versions, requires)


@pytest.fixture(scope="module")
def sdist_requirements(vllm_sdist_pristine: Path) -> list[Requirement]:
    return vr.tree_requirements(vllm_sdist_pristine, FILES)


def test_every_vllm_requirement_is_declared(sdist_requirements: list[Requirement]) -> None:
    """Static and fast: each name vLLM needs on our platforms is in pixi.toml."""
    declared = vr.declared(manifest())
    for platform in vr.PLATFORM_MACHINES:
        missing = [
            str(r) for r in sdist_requirements
            if vr.applies(r, platform) and vr.normalize(r.name) not in declared
        ]
        assert missing == [], f"{platform}: vLLM needs these, pixi.toml lacks them: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("platform", sorted(vr.PLATFORM_MACHINES))
def test_declared_set_resolves_to_what_vllm_needs(
    platform: str, sdist_requirements: list[Requirement]
) -> None:
    requirements = vr.declared_requirements(manifest())
    assert any(r.startswith("torch==") for r in requirements), requirements
    got = resolved_set(resolve(requirements, platform))
    diffs = vr.differences(
        sdist_requirements, platform, declared_specs=vr.declared(manifest()),
        installed=got.versions, requires_of=got.requires_of,
    )
    assert diffs == [], f"{platform}: {vr.one_line(diffs)}"
    # What the issue found, by name: transformers 4.57 needs huggingface-hub < 1.0.
    assert got.versions["huggingface-hub"].split(".")[0] == "0"
    assert vr.normalize("flashinfer-python") in got.versions


# --------------------------------------------------------------------------- the comparison
SETUPTOOLS = Requirement("setuptools>=77.0.3,<81.0.0; python_version > '3.11'")


def test_undeclared_requirement_is_named() -> None:
    declared = {k: v for k, v in vr.declared(manifest()).items() if k != "setuptools"}
    diffs = vr.differences([SETUPTOOLS], "linux-aarch64", declared_specs=declared,
                           installed={"setuptools": "80.9.0"})
    assert [(d.name, d.kind) for d in diffs] == [("setuptools", "undeclared")]
    assert vr.one_line(diffs).startswith("not declared in pixi.toml: setuptools")


def test_version_outside_range_is_named() -> None:
    """What pixi's own resolution gave before: setuptools 84 where vLLM needs < 81."""
    diffs = vr.differences([SETUPTOOLS], "linux-64", declared_specs={"setuptools": ""},
                           installed={"setuptools": "84.2.1"})
    assert [(d.name, d.kind) for d in diffs] == [("setuptools", "version")]
    assert "84.2.1 installed, needs <81.0.0,>=77.0.3" in diffs[0].detail


def test_markers_are_evaluated_for_the_target_not_this_interpreter() -> None:
    """This machine runs Python 3.11; the environment is 3.12, where the marker holds."""
    assert vr.applies(SETUPTOOLS, "linux-64")
    x86_only = Requirement("foo; platform_machine == 'x86_64'")
    assert vr.applies(x86_only, "linux-64") and not vr.applies(x86_only, "linux-aarch64")


def test_extras_requirements_are_checked() -> None:
    req = Requirement("ray[cgraph]>=2.48.0")
    requires = {"ray": ["click>=7", "cupy-cuda12x; sys_platform != 'darwin' and extra == 'cgraph'"]}
    diffs = vr.differences(
        [req], "linux-64", declared_specs={"ray": ""}, installed={"ray": "2.60.0"},
        requires_of=lambda n: requires.get(n, []),
    )
    assert [(d.name, d.kind) for d in diffs] == [("cupy-cuda12x", "missing")]


def test_requirement_files_follow_includes(tmp_path: Path) -> None:
    req = tmp_path / "requirements"
    req.mkdir()
    (req / "common.txt").write_text("regex # comment\nsix>=1.16.0; python_version > '3.11'\n")
    (req / "cuda.txt").write_text("-r common.txt\n\ntorch==2.9.1\nnumba == 0.61.2 # why\n")
    (req / "build.txt").write_text("cmake>=3.26.1\nregex\n")
    got = [str(r) for r in vr.tree_requirements(tmp_path, FILES)]
    assert got == ['regex', 'six>=1.16.0; python_version > "3.11"', "numba==0.61.2"]
