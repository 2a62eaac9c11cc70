"""Build once, install anywhere: a vLLM wheel from the built tree, with its stamp beside it, and
an install that refuses a wheel built for another torch, CUDA or machine, or one that changed.

The stamp travels as ``<wheel>.turbo.json`` (the wheel's sha256 is inside it, so it cannot be
inside the wheel itself). Installing records that stamp as this node's build stamp, so doctor,
serve and the two-node check see an installed wheel exactly like a local build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo import paths, proc, stamp, toolchain
from turbo.build_run import Echo, run_step
from turbo.build_types import GB10_CUBINS, Step, StepKind
from turbo.console import TaskLog
from turbo.errors import TurboError
from turbo.host import Host
from turbo.manifest import sha256_file as sha256_file
from turbo.outcome import Outcome, done
from turbo.pins import Pins

STAMP_SUFFIX = ".turbo.json"
CHUNK = 1 << 20


def stamp_for(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + STAMP_SUFFIX)


def wheel_argv(python: str, src: Path, out: Path) -> list[str]:
    return [
        python,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-build-isolation",
        "--no-deps",
        "-w",
        str(out),
        str(src),
    ]


@dataclass
class WheelResult:
    wheel: Path
    stamp_path: Path
    stamp: dict[str, Any]


def make_wheel(
    dest: Path, *, python: str, echo: Echo = print, dry_run: bool = False
) -> WheelResult | list[str]:
    """Wheel the tree the stamp describes, with the build's own environment: the CMake build
    directory is reused, so nothing is compiled again. Returns the command line (redacted) when
    ``dry_run``."""
    built = dict(stamp.require_ok(stamp.read_stamp()))
    if "installed_from" in built:
        raise TurboError(
            "wheel",
            "this node's vLLM was installed from a wheel, not built here",
            f"Copy that wheel instead: {built['installed_from'].get('wheel')}.",
        )
    src = Path(built["source"]["path"])
    env = {k: str(v) for k, v in built.get("flags", {}).get("env", {}).items()}
    argv = wheel_argv(python, src, dest)
    if dry_run:
        return [proc.describe(argv, env)]
    if not src.is_dir():
        raise TurboError("wheel", f"the built tree {src} is gone", "Run build-vllm again.")
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".wheel-", dir=dest))
    try:
        with TaskLog("wheel") as log:
            echo(f"log: {log.path}")
            run_step(
                Step("wheel", wheel_argv(python, src, scratch), src, env, kind=StepKind.RUN),
                log,
                echo,
            )
        made = sorted(scratch.glob("vllm-*.whl"))
        if len(made) != 1:
            raise TurboError("wheel", f"pip produced {len(made)} vLLM wheels", "See the log.")
        final = dest / made[0].name
        os.replace(made[0], final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = {
        **built,
        "wheel": final.name,
        "wheel_sha256": sha256_file(final),
        "wheel_made_at": stamp.now_iso(),
    }
    spath = stamp.write_stamp(record, stamp_for(final))
    echo(f"wheel {final}\nstamp {spath} (sha256 {record['wheel_sha256'][:16]})")
    return WheelResult(final, spath, record)


def _fetch(url: str) -> Path:
    """A wheel (and its stamp) from a URL into the cache; the stamp check comes after."""
    import requests

    name = url.rstrip("/").rsplit("/", 1)[-1]
    dest = paths.cache_dir() / "wheels" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in ((url, dest), (url + STAMP_SUFFIX, stamp_for(dest))):
        tmp = dst.with_name(dst.name + ".part")
        try:
            with requests.get(src, stream=True, timeout=120) as resp, tmp.open("wb") as fh:
                resp.raise_for_status()
                for block in resp.iter_content(CHUNK):
                    fh.write(block)
            os.replace(tmp, dst)
        except requests.RequestException as exc:
            tmp.unlink(missing_ok=True)
            raise TurboError(
                f"download of {src}",
                str(exc),
                f"Check the URL (the stamp must sit beside the wheel as {name}{STAMP_SUFFIX}).",
            ) from exc
    return dest


def check_wheel(
    wheel: Path, pins: Pins, *, python: str, target: str = "cuda", host: Host | None = None
) -> dict[str, Any]:
    """The wheel's stamp, if this environment can run that build; else one refusal line."""
    spath = stamp_for(wheel)
    if not wheel.is_file():
        raise TurboError(f"wheel {wheel}", "does not exist", "Check the path.")
    rec = stamp.read_stamp(spath)
    if rec is None or rec.get("result") != stamp.OK or "wheel_sha256" not in rec:
        raise TurboError(
            f"wheel {wheel.name}",
            f"has no usable stamp beside it ({spath.name})",
            "Copy the .turbo.json made with the wheel too (`invoke wheel`).",
        )
    got = sha256_file(wheel)
    if got != rec["wheel_sha256"] or rec.get("wheel") != wheel.name:
        raise TurboError(
            f"wheel {wheel.name}",
            f"sha256 {got[:16]} does not match its stamp's "
            f"{str(rec['wheel_sha256'])[:16]} (changed or damaged since it was "
            "built)",
            "Copy it again from the build node; never edit a wheel.",
        )
    tc = toolchain.quick_probe(pins, python=python, target="empty", host=host)
    checks = (
        ("machine", rec.get("machine"), tc.machine),
        ("torch", rec.get("torch"), tc.torch),
        ("CUDA (torch's)", rec.get("cuda"), tc.torch_cuda),
    )
    if rec.get("target") != target:
        raise TurboError(
            f"wheel {wheel.name}",
            f"was built for target {rec.get('target')}, this install asks for {target}",
            "A GB10 node needs a wheel from a cuda build; use --target only for test wheels.",
        )
    for what, theirs, ours in checks:
        if theirs != ours:
            raise TurboError(
                f"wheel {wheel.name}",
                f"was built for {what} {theirs}, this environment has {ours}",
                "Build on a node with the same pinned "
                "environment, or fix this one (`pixi install`).",
            )
    if target == "cuda" and not (rec.get("cubins") or {}).get("gb10"):
        raise TurboError(
            f"wheel {wheel.name}",
            f"its stamp records no GB10 cubin ({', '.join(GB10_CUBINS)})",
            f"Rebuild with TORCH_CUDA_ARCH_LIST={pins.toolchain.arch_list}.",
        )
    return dict(rec)


def install_argv(python: str, wheel: Path, constraints: Path, no_deps: bool) -> list[str]:
    return (
        [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(wheel)]
        if no_deps
        else [python, "-m", "pip", "install", str(wheel), "-c", str(constraints)]
    )


def install_wheel(
    where: str,
    pins: Pins,
    *,
    python: str,
    target: str = "cuda",
    no_deps: bool = False,
    dry_run: bool = False,
    echo: Echo = print,
    host: Host | None = None,
) -> dict[str, Any]:
    """Check, install (torch held by a constraint) and record the wheel's stamp here."""
    wheel = _fetch(where) if "://" in where else Path(where).absolute()
    rec = check_wheel(wheel, pins, python=python, target=target, host=host)
    constraints = paths.state_dir() / "build" / "constraints.txt"
    argv = install_argv(python, wheel, constraints, no_deps)
    if dry_run:
        echo(proc.describe(argv))
        return rec
    constraints.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(f"torch=={rec['torch']}\n")
    with TaskLog("install-wheel") as log:
        run_step(Step("install wheel", argv, paths.state_dir(), kind=StepKind.RUN), log, echo)
    installed = toolchain.installed_vllm(python, host)
    if installed != rec.get("vllm_version"):
        raise TurboError(
            "install-wheel",
            f"installed vLLM is {installed}, the stamp says {rec.get('vllm_version')}",
            "See the log.",
        )
    record = {
        **rec,
        "installed_from": {
            "wheel": str(wheel),
            "sha256": rec["wheel_sha256"],
            "at": stamp.now_iso(),
        },
    }
    stamp.write_stamp(record)
    echo(
        f"installed {wheel.name}; stamp recorded at {paths.stamp_path()} "
        f"(build {stamp.identity_digest(record)[:16]})"
    )
    return record


def compare_files(a: Path, b: Path) -> list[tuple[str, Any, Any]]:
    """Differences between two stamps (for example this node's and the worker's)."""
    sa, sb = stamp.read_stamp(a), stamp.read_stamp(b)
    for p, s in ((a, sa), (b, sb)):
        if s is None:
            raise TurboError(f"stamp {p}", "is missing or not JSON", "Check the path.")
    assert sa is not None and sb is not None
    return stamp.compare(sa, sb)


def identity(rec: dict[str, Any]) -> dict[str, Any]:
    """What makes two builds the same, with its digest first."""
    return {"digest": stamp.identity_digest(rec), **stamp.identity(rec)}


def identity_json(rec: dict[str, Any]) -> str:
    return json.dumps(identity(rec), indent=2)


# --------------------------------------------------------------------------- commands
def wheel_command(dest: Path, *, python: str, dry_run: bool = False, say: Echo = print) -> Outcome:
    """``wheel``: the command line under ``dry_run``; else the wheel, its stamp as data."""
    res = make_wheel(dest, python=python, echo=say, dry_run=dry_run)
    if isinstance(res, list):
        return done(" ".join(res))
    return done(data=res.stamp)


def install_command(
    where: str,
    pins: Pins,
    *,
    python: str,
    target: str = "cuda",
    no_deps: bool = False,
    dry_run: bool = False,
    say: Echo = print,
) -> Outcome:
    """``install-wheel``: check and install the wheel; the stamp it records as data."""
    rec = install_wheel(
        where, pins, python=python, target=target, no_deps=no_deps, dry_run=dry_run, echo=say
    )
    return done(data=rec)


def stamp_command(compare: Path | None = None) -> Outcome:
    """``build-stamp``: this node's build identity; with ``compare``, whether another node's
    stamp names the same build (a difference is a TurboError naming every field)."""
    mine = dict(stamp.require_ok(stamp.read_stamp()))
    if compare is not None:
        other = stamp.read_stamp(compare)
        if other is None:
            compare_files(paths.stamp_path(), compare)
        stamp.require_same_build(mine, other or {}, remote_name=str(compare))
        return done(f"same build: {stamp.identity_digest(mine)[:16]}")
    text = (
        f"build {stamp.identity_digest(mine)[:16]}: vLLM {mine.get('commit')} "
        f"patches {str(mine.get('patch_digest'))[:12]} arch {mine.get('arch_list')} "
        f"torch {mine.get('torch')} CUDA {mine.get('cuda')} {mine.get('machine')}"
    )
    return done(text, identity(mine))
