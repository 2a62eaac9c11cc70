"""Adopt what was not made here: an installed vLLM, or a model directory copied from elsewhere.

``adopt-vllm`` stamps a vLLM that is installed but was not built by ``build-vllm`` (a pip
install, a wheel from another Spark, vLLM's CPU build): its version, location, target device,
torch and, for CUDA builds, the cubin targets of its kernels. serve's preflight then knows what
it runs; GPU profiles still refuse a vLLM without GB10 code, and the ``cpu`` profile refuses
anything but a CPU build.

``adopt-model`` checks a local checkpoint (config, index, every shard's safetensors header and
size against the index) and writes its manifest, hashing every file, so ``serve`` and
``doctor`` treat it like a fetched one. The way to use a model copied from another Spark.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo import paths, proc, safetensors_header, stamp
from turbo.build_verdict import gb10_verdict as gb10_verdict
from turbo.cubins import cubin_targets, gb10_ok
from turbo.errors import TurboError, UsageError
from turbo.manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    read_manifest,
    sha256_file,
    write_manifest,
)
from turbo.outcome import Outcome, done

Out = Callable[[str], None]

# Runs in the adopted vLLM's interpreter: metadata only, no `import vllm` (it takes seconds
# and may print), torch is imported for its CUDA version.
_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json, platform, sys
spec = iu.find_spec("vllm")
out = {"python": platform.python_version(), "machine": platform.machine(),
       "executable": sys.executable}
if spec is None or not spec.submodule_search_locations:
    out["error"] = "no vllm package importable"
else:
    loc = list(spec.submodule_search_locations)[0]
    out["location"] = loc
    dist = None
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("vllm"):
            if any(str(f).startswith("vllm/") for f in (d.files or [])):
                dist = d
                break
    if dist is not None:
        out["dist"] = dist.metadata["Name"]
        out["version"] = dist.version
        out["record"] = dist.read_text("RECORD") or ""
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        out["torch_error"] = repr(exc)
print("TURBO-PROBE " + json.dumps(out))
"""

TARGETS = ("cuda", "cpu", "rocm")


def interpreter_of(exe: Path) -> Path:
    """The Python that runs a console script (its ``#!`` line), or ``exe`` if it is Python."""
    try:
        with exe.open("rb") as fh:
            first = fh.readline(512).decode(errors="replace")
    except OSError as exc:
        raise UsageError(str(exe), f"cannot be read ({exc.strerror})", "Pass --vllm PATH.") from exc
    if first.startswith("#!"):
        words = first[2:].strip().split()
        if words and Path(words[0]).name == "env" and len(words) > 1:
            found = shutil.which(words[1])
            return Path(found) if found else Path(words[1])
        if words:
            return Path(words[0])
    return exe


def probe_vllm(python: Path) -> dict[str, Any]:
    res = proc.capture([str(python), "-c", _PROBE], timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("TURBO-PROBE ")), None)
    if not res.ok or line is None:
        last = (res.stderr.strip().splitlines() or [res.why() or f"exit {res.rc}"])[-1]
        raise TurboError(f"probing {python}", last, "Pass --vllm with a working vLLM install.")
    data: dict[str, Any] = json.loads(line[len("TURBO-PROBE ") :])
    if "error" in data:
        raise TurboError(
            f"probing {python}", str(data["error"]), "Install vLLM there or pass --vllm PATH."
        )
    return data


def target_of(dist: str, version: str, location: Path) -> str:
    """Which device the installed vLLM was built for, from how it was packaged."""
    low = f"{dist} {version}".lower()
    if "cpu" in low:
        return "cpu"
    if "rocm" in low or any(location.glob("_rocm_C*.so")):
        return "rocm"
    return "cuda"


def _refuse_replacing_a_local_build() -> None:
    old = stamp.read_stamp()
    if (
        old is not None
        and old.get("result") == stamp.OK
        and (old.get("source") or {}).get("kind") != "adopted"
    ):
        raise TurboError(
            "adopt-vllm",
            f"{paths.stamp_path()} records a vLLM built here ({str(old.get('commit'))[:12]})",
            "Pass --force to replace it with the adopted install.",
        )


def _cubins_of(location: Path, tool: str | None) -> tuple[dict[str, Any], str | None]:
    """The cubin targets of every shared object under ``location``, and the arch list they
    make (None without cuobjdump, or when no object carries a cubin)."""
    if not tool:
        return {"targets": {}, "gb10": None, "why": "no cuobjdump to list cubin targets"}, None
    found = cubin_targets(tool, sorted(location.rglob("*.so")))
    arch_list = ";".join(sorted({t for ts in found.values() for t in ts})) or None
    return {"targets": found, "gb10": gb10_ok(found)}, arch_list


def adopt_vllm(
    vllm: str = "",
    *,
    force: bool = False,
    dry_run: bool = False,
    cuobjdump: str | None = None,
    out: Out = print,
) -> dict[str, Any]:
    """Probe the vLLM behind ``vllm`` (an executable; default: the one on PATH) and stamp it."""
    exe_text = vllm or shutil.which("vllm") or ""
    if not exe_text:
        raise UsageError(
            "adopt-vllm",
            "no `vllm` on PATH",
            "Pass --vllm /path/to/bin/vllm (the console script of the install to adopt).",
        )
    exe = Path(exe_text).absolute()
    if not exe.is_file():
        raise UsageError("adopt-vllm", f"{exe} is not a file", "Pass --vllm /path/to/bin/vllm.")
    python = interpreter_of(exe)
    if not force:
        _refuse_replacing_a_local_build()
    info = probe_vllm(python)
    location = Path(str(info["location"]))
    dist = str(info.get("dist") or "vllm")
    version = str(info.get("version") or "?")
    target = target_of(dist, version, location)
    cubins: dict[str, Any] | None = None
    arch_list: str | None = None
    if target == "cuda":
        cubins, arch_list = _cubins_of(location, cuobjdump or shutil.which("cuobjdump"))
    record_digest = hashlib.sha256(str(info.get("record", "")).encode()).hexdigest()
    data: dict[str, Any] = {
        "result": stamp.OK,
        "source": {"kind": "adopted", "path": str(location), "dist": dist},
        "commit": None,
        "patch_digest": None,
        "arch_list": arch_list,
        "target": target,
        "torch": info.get("torch"),
        "cuda": info.get("torch_cuda") if target == "cuda" else None,
        "python": info.get("python"),
        "machine": info.get("machine") or platform.machine(),
        "vllm_version": version,
        # What makes two adopted installs the same: the same files (pip's RECORD).
        "installed_digest": record_digest,
        "vllm_exe": str(exe),
        "python_exe": str(python),
        "finished_at": stamp.now_iso(),
    }
    if cubins is not None:
        data["cubins"] = cubins
    summary = (
        f"vLLM {version} ({dist}, target {target}) at {location}; torch {info.get('torch')}"
        + (f"; GB10 code: {cubins.get('gb10')}" if cubins is not None else "")
    )
    if dry_run:
        out(f"would stamp {paths.stamp_path()}: {summary}")
        return data
    stamp.write_stamp(data)
    out(f"adopted {summary}")
    out(f"stamp: {paths.stamp_path()} (build {stamp.identity_digest(data)[:16]})")
    return data


# ------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ShardInfo:
    name: str
    size: int
    tensors: tuple[str, ...]


def read_safetensors_header(path: Path) -> ShardInfo:
    """Parse a shard's header and check its size: 8 + header + the last tensor's end offset."""
    try:
        header = safetensors_header.read(path)
    except safetensors_header.BadHeader as exc:
        raise _bad_shard(path, str(exc)) from exc
    size, want = header.size, header.expected_size
    if size != want:
        state = "truncated" if size < want else "longer than its header says"
        raise _bad_shard(path, f"is {state}: {size} bytes, header needs {want}")
    return ShardInfo(path.name, size, header.names)


def _bad_shard(path: Path, why: str) -> TurboError:
    return TurboError(
        f"shard {path}", why, "Copy the file again from its source (the copy is damaged)."
    )


def model_problems(model_dir: Path) -> tuple[list[str], list[ShardInfo]]:
    """Everything wrong with a checkpoint directory, and its shards when they parse."""
    problems: list[str] = []
    cfg = model_dir / "config.json"
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not config.get("architectures"):
            problems.append("config.json names no architectures")
    except FileNotFoundError:
        problems.append("no config.json")
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"config.json is not readable JSON ({exc})")
    index_path = model_dir / INDEX_NAME
    weight_map: dict[str, str] | None = None
    if index_path.exists():
        try:
            weight_map = {
                str(k): str(v)
                for k, v in json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].items()
            }
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{INDEX_NAME} has no readable weight_map ({exc!r})")
    shard_names = (
        sorted(set(weight_map.values()))
        if weight_map
        else sorted(p.name for p in model_dir.glob("*.safetensors"))
    )
    if not shard_names:
        problems.append("no *.safetensors shards")
    shards: list[ShardInfo] = []
    for name in shard_names:
        p = (model_dir / name).resolve()
        if model_dir.resolve() not in p.parents:
            problems.append(f"{INDEX_NAME} names {name}, outside the model directory")
            continue
        if not p.is_file():
            problems.append(f"missing shard {name} (named by {INDEX_NAME})")
            continue
        try:
            shards.append(read_safetensors_header(p))
        except TurboError as err:
            problems.append(f"{name}: {err.why}")
    if weight_map:
        have = {t: s.name for s in shards for t in s.tensors}
        for tensor, shard in sorted(weight_map.items()):
            if shard in have.values() and have.get(tensor) != shard:
                problems.append(f"{INDEX_NAME} puts {tensor} in {shard}, whose header lacks it")
                break
    return problems, shards


def adopt_model(
    model_dir: str,
    *,
    repo: str = "",
    dry_run: bool = False,
    force: bool = False,
    out: Out = print,
) -> Path:
    """Check ``model_dir`` and write its manifest (sizes and sha256 of every file)."""
    d = Path(model_dir).expanduser().absolute()
    if not d.is_dir():
        raise UsageError("adopt-model", f"{d} is not a directory", "Pass the model directory.")
    problems, shards = model_problems(d)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TurboError(
            f"adopt-model {d}",
            problems[0] + more,
            "Copy the checkpoint again (or fetch it with `invoke fetch-model`).",
        )
    existing = read_manifest(d)
    if existing is not None and not force and existing.extra.get("adopted") is not True:
        raise TurboError(
            f"adopt-model {d}",
            f"it already has a manifest from fetch-model "
            f"({existing.repo}@{existing.revision[:12]})",
            "Use `invoke fetch-model` to re-check it, or pass --force to replace the manifest.",
        )
    files = sorted(
        p
        for p in d.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and p.name != MANIFEST_NAME
        # huggingface_hub's download cache inside the model directory is not the model (the
        # directory itself may well live under ~/.cache).
        and ".cache" not in p.relative_to(d).parts
    )
    total = sum(p.stat().st_size for p in files)
    out(
        f"{d}: config ok, {len(shards)} shard(s) with valid headers and sizes; "
        f"hashing {len(files)} files ({total / 1e9:.2f} GB)"
    )
    if dry_run:
        out(f"would write {d / MANIFEST_NAME}")
        return d / MANIFEST_NAME
    t0 = time.monotonic()
    entries = []
    done = 0
    next_note = t0 + 10
    for p in files:
        entries.append(ManifestFile(str(p.relative_to(d)), p.stat().st_size, sha256_file(p)))
        done += p.stat().st_size
        if time.monotonic() >= next_note:
            out(f"  hashed {done / 1e9:.1f} of {total / 1e9:.1f} GB")
            next_note = time.monotonic() + 10
    config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    manifest = Manifest(
        repo=repo or f"local:{d.name}",
        revision="local",
        files=tuple(entries),
        fetched_at=stamp.now_iso(),
        extra={"adopted": True, "architectures": config.get("architectures")},
    )
    path = write_manifest(d, manifest)
    out(f"wrote {path} ({len(entries)} files, {time.monotonic() - t0:.1f} s)")
    return path


# --------------------------------------------------------------------------- commands
def _keys_sorted(obj: Any) -> Any:
    """``obj`` with every mapping's keys in order (the stamp's JSON is printed sorted)."""
    if isinstance(obj, dict):
        return {k: _keys_sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_keys_sorted(v) for v in obj]
    return obj


def vllm_command(vllm: str = "", *, force: bool = False, dry_run: bool = False) -> Outcome:
    """``adopt-vllm``: what was (or would be) stamped, as lines and as the stamp's data."""
    lines: list[str] = []
    data = adopt_vllm(vllm, force=force, dry_run=dry_run, out=lines.append)
    return done("\n".join(lines), _keys_sorted(data))


def model_command(
    model_dir: str, *, repo: str = "", force: bool = False, dry_run: bool = False, say: Out = print
) -> Outcome:
    """``adopt-model``: progress to ``say``; the manifest's path as data."""
    path = adopt_model(model_dir, repo=repo, force=force, dry_run=dry_run, out=say)
    return done(data={"manifest": str(path)})


__all__ = [
    "TARGETS",
    "adopt_model",
    "adopt_vllm",
    "gb10_verdict",
    "model_command",
    "model_problems",
    "vllm_command",
]
