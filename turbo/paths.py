"""Where things live on disk. Every location can be moved with an environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class _ModelLocation(Protocol):
    @property
    def path(self) -> str: ...


class PinnedModel(Protocol):
    """What :func:`model_dir` needs of the pins (:class:`turbo.pins.Pins` has it). A protocol,
    not an import: locations stand below the pins, so everything that needs a directory can."""

    @property
    def model(self) -> _ModelLocation: ...


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    """Per-checkout working state: vLLM source, build stamp, logs, pid files.

    ``TURBO_HOME`` moves it (for example to a bigger disk); default ``<repo>/.turbo``.
    """
    return Path(os.environ.get("TURBO_HOME") or repo_root() / ".turbo")


def cache_dir() -> Path:
    """Per-user cache shared by checkouts (downloaded sdists, test fixtures)."""
    base = os.environ.get("TURBO_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vllm-turbo"


def log_dir() -> Path:
    return state_dir() / "logs"


def vllm_src_dir() -> Path:
    return Path(os.environ.get("VLLM_SRC") or state_dir() / "vllm")


def stamp_path() -> Path:
    return state_dir() / "build-stamp.json"


def run_dir() -> Path:
    return state_dir() / "run"


def model_dir(pins: PinnedModel) -> Path:
    """The model directory: ``MODEL`` (the seed's name) overrides the pinned default."""
    return Path(os.environ.get("MODEL") or pins.model.path)


def nearest_existing(path: Path) -> Path:
    """The path itself or its closest existing parent (for free-space checks before mkdir)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def unwritable_reason(path: Path, *, directory: bool = True) -> str | None:
    """Why this user cannot create or write ``path`` (a directory unless ``directory`` is
    False), or None when it can.

    The path itself when it exists, else its nearest existing parent, decides: so a model
    directory under ``/data`` that a normal user cannot create is known before any download,
    build or server start (and ``--dry-run`` and ``doctor`` can say so)."""
    p = path.expanduser().absolute()
    base = nearest_existing(p)
    if directory and base == p and not p.is_dir():
        return f"{p} is a file, not a directory"
    if base != p and not base.is_dir():
        return f"{base} is a file, so {p} cannot be created"
    if not os.access(base, os.W_OK) or (base.is_dir() and not os.access(base, os.X_OK)):
        who = "this user" if os.geteuid() != 0 else "root (read-only file system?)"
        if base == p:
            return f"{p} is not writable by {who}"
        return f"{p} cannot be created: {base} is not writable by {who}"
    return None


HOME_FIX = "Set TURBO_HOME to a directory you own, or fix the owner (`sudo chown -R`)."


def require_writable(what: str, path: Path, fix: str = HOME_FIX) -> None:
    """One line (TurboError) when ``path`` cannot be written: before work starts, dry runs too."""
    why = unwritable_reason(path)
    if why:
        from turbo.errors import TurboError

        raise TurboError(what, why, fix)
