"""Fixtures' building blocks for the build, source and wheel tests: a local git "upstream" made
from vLLM's real sdist, and Python environments with a CPU torch.

The torch environment is made once per machine under the cache dir (torch is ~1 GB installed);
each test then gets a fresh, empty venv that sees it through a .pth file, so what a test installs
(vLLM itself) never leaks into the next test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from turbo import paths

# The CPU torch this machine has on disk (pip's config caps torch at what lies there); vLLM's
# build tools from requirements/build.txt, minus torch, so builds in the tests need no index.
TORCH_SPEC = os.environ.get("TURBO_TEST_TORCH", "torch==2.13.0")
BASE_PACKAGES = [TORCH_SPEC, "numpy", "cmake>=3.26.1", "ninja", "packaging>=24.2",
                 "setuptools>=77.0.3,<81.0.0", "setuptools-scm>=8", "wheel", "jinja2>=3.1.6",
                 "regex", "build", "grpcio-tools==1.78.0"]


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def make_upstream(tree: Path, where: Path) -> tuple[str, list[str]]:
    """A git repository holding ``tree`` as its second commit (the first is an unrelated
    README), serving any commit by hash like GitHub does. Returns (file URL, [c1, c2])."""
    repo = where / "upstream"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("older history the build must not fetch\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "older commit")
    c1 = git(repo, "rev-parse", "HEAD")
    for item in tree.iterdir():
        dst = repo / item.name
        if item.is_dir():
            shutil.copytree(item, dst, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dst)
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "-m", "vLLM 0.16.0 sdist")
    c2 = git(repo, "rev-parse", "HEAD")
    # One pack makes each fetch in the tests about twice as fast.
    git(repo, "repack", "-adq")
    git(repo, "config", "uploadpack.allowReachableSHA1InWant", "true")
    git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    return f"file://{repo}", [c1, c2]


def _purelib(python: Path) -> str:
    return subprocess.run([str(python), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def torch_base_env() -> Path:
    """The cached venv with CPU torch and vLLM's build tools; skips the test if it cannot be
    made (no torch wheel reachable)."""
    key = TORCH_SPEC.replace("=", "").replace(" ", "")
    base = paths.cache_dir() / "test-envs" / f"py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    python = base / "bin" / "python"
    if (base / ".complete").exists():
        return python
    # Made at its final path (a venv records absolute paths); only the marker, written last,
    # says it is complete, so an interrupted set-up is redone.
    shutil.rmtree(base, ignore_errors=True)
    base.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *BASE_PACKAGES],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot install {TORCH_SPEC} and vLLM's build tools here: "
                    f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    (base / ".complete").write_text("ok\n")
    return python


def fresh_env(where: Path, base_python: Path) -> Path:
    """An empty venv that sees the base env's packages (torch, pip, build tools) through a .pth
    file; installs go into the new venv only."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    Path(_purelib(python), "_turbo_test_base.pth").write_text(_purelib(base_python) + "\n")
    return python


def purelib_of(python: Path) -> Path:
    return Path(_purelib(python))
