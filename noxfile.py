"""Test sessions. A bare `nox` runs exactly what CI runs (`nox -l` lists them with docs).

Dependencies come from pyproject.toml's [dependency-groups]; arguments after `--` go to pytest.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")

# Inside `pixi run`/`pixi shell` the environment already holds torch (CUDA 13.0 build) and the
# toolchain: let session venvs see it instead of downloading another torch.
IN_PIXI = bool(os.environ.get("PIXI_ENVIRONMENT_NAME"))
VENV_PARAMS = ["--system-site-packages"] if IN_PIXI else []


def _install(session: nox.Session, group: str) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, group))
    session.install("-e", ".")


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """CPU test suite: manifest, pins, CLI, doctor, patches, build, fetch, serve (no GPU)."""
    _install(session, "test")
    session.run(
        "pytest", "tests", "--ignore=tests/kernels", "--ignore=tests/e2e", *session.posargs
    )


@nox.session(venv_params=VENV_PARAMS, default=bool(shutil.which("nvcc")))
def kernel_tests(session: nox.Session) -> None:
    """E2M1 / NVFP4 kernels: exhaustive CPU check, nvcc compile checks, GPU tests when a GPU is
    present (skipped with a reason otherwise). Default only where nvcc exists."""
    _install(session, "kernels")
    # --durations shows the exhaustive check's run time (about 1.5 minutes on 2 cores).
    session.run("pytest", "tests/kernels", "--durations=5", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """The real vLLM 0.16.0 (its CPU build) driven by the product's own commands: adopt-vllm,
    adopt-model, serve --profile cpu (detached and foreground), verify, bench (against
    `vllm bench serve`), stop, a failing speculative launch, a two-node Ray cluster.

    vLLM's environment (~8.5 GB, ~5 min the first time) is cached per machine under
    ~/.cache/vllm-turbo/envs (TURBO_CACHE moves it); then the lane takes a few minutes."""
    _install(session, "e2e")
    session.run("pytest", "tests/e2e", "-v", "-s", "--durations=0", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (style, imports, bugs) and mypy --strict on the package and tasks.py."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "turbo")
    session.run("mypy")


@nox.session(venv_backend="none", default=False)
def configure_proof(session: nox.Session) -> None:
    """vLLM 0.16.0's own CMake configure against a CUDA 13.0 prefix in conda-forge's layout:
    fails with the old activation, passes with pixi.toml's; then compiles the GB10 units with
    CMake's flags. Needs a CUDA torch, CUDA 13.0, cmake, ninja (docs/build.md, "configure");
    options after `--` go to tests/configure_proof.py (--help lists them)."""
    session.run("python", "tests/configure_proof.py", *session.posargs)
