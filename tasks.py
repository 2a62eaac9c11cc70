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
_BUILD_HELP = {
    "src": "Build this existing tree (a vLLM git checkout or unpacked sdist) instead of "
           "fetching the pinned commit.",
    "ref": "Commit to fetch and build (full 40-hex hash; default: the pin). With --src: the "
           "commit (or sdist version) the tree must be at.",
    "repo": "Git URL to fetch from (default: the pinned repository; a mirror for offline use).",
    "target": "cuda (the GB10 build, default) or empty (vLLM's Python-only mode, for CPU "
              "machines and tests).",
    "arch_list": "TORCH_CUDA_ARCH_LIST (default: the pin, 12.1a for GB10).",
    "max_jobs": "MAX_JOBS: compile threads (default: from cores and available memory; see "
                "docs/build.md). Lower it if a compiler is killed for memory.",
    "nvcc_threads": "NVCC_THREADS: threads per nvcc process (default: the pin).",
    "cutlass_src": "Local CUTLASS source (VLLM_CUTLASS_SRC_DIR) for offline builds.",
    "flash_attn_src": "Local vllm-flash-attn source (VLLM_FLASH_ATTN_SRC_DIR).",
    "flashmla_src": "Local FlashMLA source (FLASH_MLA_SRC_DIR).",
    "qutlass_src": "Local QuTLASS source (QUTLASS_SRC_DIR).",
    "triton_kernels_src": "Local triton_kernels source (TRITON_KERNELS_SRC_DIR).",
    "python": "Interpreter of the environment to build into (default: this one).",
    "no_runtime_deps": "Skip installing vLLM's runtime requirements (requirements/cuda.txt).",
    "force": "Rebuild even if the stamp says this exact build is done.",
    "verbose": "Echo the whole build output, not just progress (the log has it either way).",
    "dry_run": "Print the plan (every command and environment variable) and exit 0.",
    "json": "With --dry-run: print the plan as JSON. Otherwise: print the stamp as JSON.",
}


def _build_options(src: str, ref: str, repo: str, target: str, arch_list: str, max_jobs: int,
                   nvcc_threads: int, overrides: dict[str, str], python: str,
                   no_runtime_deps: bool, force: bool, verbose: bool) -> object:
    from pathlib import Path

    from turbo.build import BuildOptions

    return BuildOptions(
        python=python or sys.executable, target=target, ref=ref or None, repo=repo or None,
        src=Path(src) if src else None, arch_list=arch_list or None,
        max_jobs=max_jobs or None, nvcc_threads=nvcc_threads or None,
        overrides={k: v for k, v in overrides.items() if v},
        runtime_deps=not no_runtime_deps, force=force, verbose=verbose)


@task(name="build-vllm", help=_BUILD_HELP)
def build_vllm(c: Context, src: str = "", ref: str = "", repo: str = "", target: str = "cuda",
               arch_list: str = "", max_jobs: int = 0, nvcc_threads: int = 0,
               cutlass_src: str = "", flash_attn_src: str = "", flashmla_src: str = "",
               qutlass_src: str = "", triton_kernels_src: str = "", python: str = "",
               no_runtime_deps: bool = False, force: bool = False, verbose: bool = False,
               dry_run: bool = False, json: bool = False) -> None:
    """Build vLLM at the pinned commit with the GB10 patch series; a no-op when already built.

    Checks the toolchain, fetches only the pinned commit (or uses --src), applies the patch
    series, builds with pip (editable, no build isolation, torch kept), checks the extension and
    its GB10 cubins, and writes the build stamp. Re-run after an interruption: it resumes.
    """
    import json as _json

    from turbo import build
    from turbo.pins import load_pins

    overrides = {"cutlass": cutlass_src, "flash_attn": flash_attn_src, "flashmla": flashmla_src,
                 "qutlass": qutlass_src, "triton_kernels": triton_kernels_src}

    def go() -> None:
        opts = _build_options(src, ref, repo, target, arch_list, max_jobs, nvcc_threads,
                              overrides, python, no_runtime_deps, force, verbose)
        assert isinstance(opts, build.BuildOptions)
        pins = load_pins()
        if dry_run:
            plan = build.dry_run(opts, pins)
            if json:
                print(_json.dumps(plan.to_json(), indent=2))
            else:
                print(build.render_plan(plan))
            return
        result = build.build(opts, pins, echo=(lambda s: print(s, file=sys.stderr)) if json
                             else print)
        if json:
            print(_json.dumps({"noop": result.noop, "seconds": round(result.seconds, 3),
                               "stamp": result.stamp}, indent=2, default=str))

    _guard(go)


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
