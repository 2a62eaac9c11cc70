"""invoke tasks: the command line of vllm-turbo. Option parsing, help text and exit codes only;
all logic lives in the ``turbo`` package (one module per stage).

`invoke --list` shows every task; `invoke --help TASK` explains every option.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from invoke import Collection, Context, Exit, task

from turbo.errors import NotBuiltYet, TurboError

T = TypeVar("T")


def _guard(fn: Callable[[], T]) -> T:
    """Run a stage; an expected failure becomes one line on stderr and a non-zero exit."""
    try:
        return fn()
    except TurboError as err:
        print(f"error: {err.line()}", file=sys.stderr)
        raise Exit(code=err.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: nothing is left half-done; re-run the same command to resume.",
              file=sys.stderr)
        raise Exit(code=130) from None


def _not_built(stage: str, issue: int) -> None:
    raise NotBuiltYet(stage, "not built yet in this checkout", f"See issue #{issue}.")


# --------------------------------------------------------------------------- doctor
@task(help={"json": "Print machine-readable JSON instead of the table."})
def doctor(c: Context, json: bool = False) -> None:
    """Check this host: GPU, driver, CUDA 13 + sm_121a ptxas, memory, disk, build, model, port.

    Exits 1 when any check fails (warnings do not fail).
    """
    from turbo import doctor as doc
    from turbo.pins import load_pins

    def go() -> int:
        checks = doc.run_checks(load_pins())
        print(doc.to_json(checks) if json else doc.render(checks))
        return doc.exit_code(checks)

    code = _guard(go)
    if code:
        raise Exit(code=code)


# --------------------------------------------------------------------------- build
@task(name="build-vllm")
def build_vllm(c: Context) -> None:
    """Build vLLM at the pinned commit with the GB10 patch series (not built yet)."""
    _guard(lambda: _not_built("build-vllm", 5))


# --------------------------------------------------------------------------- model
@task(name="fetch-model")
def fetch_model(c: Context) -> None:
    """Download the pinned NVFP4 model with huggingface_hub (not built yet)."""
    _guard(lambda: _not_built("fetch-model", 6))


# --------------------------------------------------------------------------- serve
@task
def serve(c: Context, profile: str = "vanilla") -> None:
    """Serve a profile: vanilla, mtp, tp2-head, tp2-worker, tp2-serve (not built yet)."""
    _guard(lambda: _not_built("serve", 7))


@task
def stop(c: Context) -> None:
    """Stop a detached server (not built yet)."""
    _guard(lambda: _not_built("stop", 7))


@task
def verify(c: Context) -> None:
    """Check a running server: health, models, chat, metrics (not built yet)."""
    _guard(lambda: _not_built("verify", 7))


@task
def bench(c: Context) -> None:
    """Benchmark a running server: decode tok/s, TTFT, MTP acceptance (not built yet)."""
    _guard(lambda: _not_built("bench", 7))


# --------------------------------------------------------------------------- patches
@task(name="check")
def patches_check(c: Context) -> None:
    """Check that the patch series applies to a vLLM tree (not built yet)."""
    _guard(lambda: _not_built("patches.check", 4))


@task(name="apply")
def patches_apply(c: Context) -> None:
    """Apply the patch series, all or nothing (not built yet)."""
    _guard(lambda: _not_built("patches.apply", 4))


@task(name="revert")
def patches_revert(c: Context) -> None:
    """Revert the patch series byte for byte (not built yet)."""
    _guard(lambda: _not_built("patches.revert", 4))


# --------------------------------------------------------------------------- kernels
@task(name="probe")
def kernels_probe(c: Context) -> None:
    """On the GPU: hardware vs software E2M1 on all 2^32 inputs (not built yet)."""
    _guard(lambda: _not_built("kernels.probe", 3))


ns = Collection(doctor, build_vllm, fetch_model, serve, stop, verify, bench)
ns.add_collection(Collection("patches", patches_check, patches_apply, patches_revert))
ns.add_collection(Collection("kernels", kernels_probe))
