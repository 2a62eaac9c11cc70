"""Read the pins data file: every version, commit and default lives there and nowhere else."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from turbo import schema
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


_FIX = "Fix it, or restore turbo/data/pins.toml from git."
_HEX40 = schema.matches(r"[0-9a-f]{40}", "a full 40-hex commit hash")
_SHA256 = schema.matches(r"[0-9a-f]{64}", "a sha256 (64 hex digits)")
_NONEMPTY = schema.matches(r"\S.*", "non-empty text")

# The file's schema comes from the dataclasses it fills (one source for both), plus ranges.
SCHEMA = schema.Table(
    {
        "vllm": schema.from_dataclass(
            VllmPin, {"commit": _HEX40, "sdist_sha256": _SHA256, "repo": _NONEMPTY}
        ),
        "toolchain": schema.from_dataclass(
            ToolchainPin,
            {"arch_list": schema.matches(r"[0-9.;+ afPTX]+", "a CUDA arch list like 12.1a")},
        ),
        "model": schema.from_dataclass(
            ModelPin,
            {
                "size_gb": schema.POSITIVE,
                "disk_margin_gb": schema.at_least(0),
                "path": _NONEMPTY,
                "repo": _NONEMPTY,
            },
        ),
        "serve": schema.from_dataclass(ServePin, {"port": schema.PORT, "host": _NONEMPTY}),
        "build": schema.from_dataclass(
            BuildPin,
            {
                "disk_gb": schema.POSITIVE,
                "gb_per_compile_thread": schema.POSITIVE,
                "mem_fraction": schema.between(0, 1, open_low=True),
                "nvcc_threads": schema.between(1, 64),
            },
        ),
    }
)


def load_pins(path: Path | None = None) -> Pins:
    """Parse and check the pins file (the packaged one unless ``path`` is given)."""
    p = path or pins_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TurboError(
            f"pins file {p}", f"cannot be read ({exc})", "Restore turbo/data/pins.toml from git."
        ) from exc
    schema.validate(raw, SCHEMA, p, _FIX)
    model = dict(raw["model"])
    variants = dict(model.pop("variants", {}))
    return Pins(
        vllm=VllmPin(**raw["vllm"]),
        toolchain=ToolchainPin(**raw["toolchain"]),
        model=ModelPin(variants=variants, **model),
        serve=ServePin(**raw["serve"]),
        build=BuildPin(**raw["build"]),
        source=str(p),
    )
