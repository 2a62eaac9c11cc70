"""Read the pins data file: every version, commit and default lives there and nowhere else."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from turbo.errors import TurboError

PINS_RESOURCE = "pins.toml"


@dataclass(frozen=True)
class VllmPin:
    repo: str
    commit: str
    describe: str
    sdist_version: str
    sdist_sha256: str


@dataclass(frozen=True)
class ToolchainPin:
    python: str
    cuda: str
    torch: str
    torch_index: str
    triton: str
    gcc: str
    arch_list: str
    min_driver: str


@dataclass(frozen=True)
class ModelPin:
    repo: str
    revision: str
    path: str
    size_gb: float
    variants: dict[str, str] = field(default_factory=dict)
    # fetch-model: file patterns a vLLM server needs, and free disk kept beyond the download.
    include: list[str] = field(default_factory=list)
    disk_margin_gb: float = 0.0


@dataclass(frozen=True)
class ServePin:
    host: str
    port: int
    served_name: str


@dataclass(frozen=True)
class BuildPin:
    disk_gb: float
    # The MAX_JOBS / NVCC_THREADS rule's inputs (turbo/build.py explains the rule).
    gb_per_compile_thread: float = 5.0
    mem_fraction: float = 0.75
    nvcc_threads: int = 2
    ccache_max_size: str = "40G"


@dataclass(frozen=True)
class Pins:
    vllm: VllmPin
    toolchain: ToolchainPin
    model: ModelPin
    serve: ServePin
    build: BuildPin
    source: str


def pins_path() -> Path:
    return Path(str(resources.files("turbo.data").joinpath(PINS_RESOURCE)))


def _section(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise TurboError(
            f"pins file {source}",
            f"section [{name}] is missing",
            "Restore turbo/data/pins.toml from git.",
        )
    return value


def load_pins(path: Path | None = None) -> Pins:
    """Parse the pins file (the packaged one unless ``path`` is given)."""
    p = path or pins_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TurboError(
            f"pins file {p}", f"cannot be read ({exc})", "Restore turbo/data/pins.toml from git."
        ) from exc
    src = str(p)
    try:
        model = dict(_section(raw, "model", src))
        variants = dict(model.pop("variants", {}))
        return Pins(
            vllm=VllmPin(**_section(raw, "vllm", src)),
            toolchain=ToolchainPin(**_section(raw, "toolchain", src)),
            model=ModelPin(variants=variants, **model),
            serve=ServePin(**_section(raw, "serve", src)),
            build=BuildPin(**_section(raw, "build", src)),
            source=src,
        )
    except TypeError as exc:
        raise TurboError(
            f"pins file {p}",
            f"has unexpected or missing keys ({exc})",
            "Restore turbo/data/pins.toml from git.",
        ) from exc
