"""Where the patch series (``patches/``) and the kernel sources (``kernels/``) are found.

Both live at the repository root, their one source of truth. A wheel carries a copy of each
inside the package, as ``turbo/_assets/<name>`` (pyproject.toml maps them there), so an
installed package finds them through :mod:`importlib.resources` without a clone. A clone or an
editable install uses the repository's own folders. When neither copy is there the caller gets
one line saying what is missing and how to get it back; nothing is guessed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from turbo.errors import TurboError

PATCHES = "patches"
KERNELS = "kernels"
# The file that tells each folder apart from an unrelated folder of the same name.
_MARKER = {PATCHES: "series", KERNELS: "e2m1.cuh"}
_WHAT = {PATCHES: "the GB10 patch series", KERNELS: "the E2M1 / NVFP4 kernel sources"}


def repo_copy(name: str) -> Path:
    """``<repo>/<name>``: beside the ``turbo`` package in a clone or an editable install."""
    return Path(__file__).resolve().parents[1] / name


def shipped_copy(name: str) -> Path | None:
    """``turbo/_assets/<name>`` inside an installed package, or None when the package is not
    installed as plain files (a zip import) and the copy cannot be handed to git or nvcc."""
    found = resources.files(__package__ or "turbo") / "_assets" / name
    return found if isinstance(found, Path) else None


def _has_marker(folder: Path | None, name: str) -> bool:
    return folder is not None and (folder / _MARKER[name]).is_file()


def locate(name: str) -> Path:
    """The folder to use: the repository's copy, else the installed package's. Never raises:
    when neither is there this is where the repository's copy would be (see :func:`require`)."""
    repo = repo_copy(name)
    if _has_marker(repo, name):
        return repo
    shipped = shipped_copy(name)
    if shipped is not None and _has_marker(shipped, name):
        return shipped
    return repo


def require(name: str) -> Path:
    """Like :func:`locate`, but a missing folder is one clear error instead of a later
    'file not found' from git or the compiler."""
    folder = locate(name)
    if not _has_marker(folder, name):
        shipped = shipped_copy(name)
        raise TurboError(
            f"{name}/ ({_WHAT[name]})",
            f"{_MARKER[name]} is neither in {repo_copy(name)} (a clone) nor in "
            f"{shipped if shipped is not None else 'turbo/_assets/' + name} (an installed package)",
            "Install vllm-turbo from its repository (`pip install .` or a wheel built there), "
            f"or restore {name}/ from git.",
        )
    return folder
