"""Shared fixtures. Every test gets its own TURBO_HOME: no test touches the checkout's state."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TURBO_HOME", str(tmp_path / "turbo-home"))
    # service.* and doctor's service row: never the real ~/.config/systemd or /etc.
    monkeypatch.setenv("TURBO_SYSTEMD_DIR", str(tmp_path / "systemd-units"))
    monkeypatch.setenv("TURBO_SERVICE_ENV_DIR", str(tmp_path / "service-env"))
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    yield
    # Issue 13: no secret a test set may end up in what the product wrote (logs, state, pid
    # files, units). Checked after every test, with the test's environment still in place.
    leaks = _secret_leaks([tmp_path / "turbo-home", tmp_path / "systemd-units"])
    assert not leaks, f"secrets written by the product: {leaks}"


_SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY")
_TOKEN_SHAPED = re.compile(rb"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})\b")


def _secret_leaks(roots: list[Path]) -> list[str]:
    values = [v.encode() for k in _SECRET_VARS if len(v := os.environ.get(k, "")) >= 4]
    leaks = []
    for root in roots:
        for p in root.rglob("*") if root.is_dir() else []:
            if not p.is_file() or p.is_symlink():
                continue
            data = p.read_bytes()
            if _TOKEN_SHAPED.search(data) or any(v in data for v in values):
                leaks.append(str(p.relative_to(root.parent)))
    return leaks


# vLLM's real source (the pinned release sdist, see turbo/sdist.py), for the patch and arch tests.
@pytest.fixture(scope="session")
def vllm_sdist_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked sdist, shared by the session: read it, never modify it."""
    from turbo.sdist import unpack_vllm_sdist

    return unpack_vllm_sdist(tmp_path_factory.mktemp("vllm-sdist"))


@pytest.fixture
def vllm_sdist_tree(vllm_sdist_pristine: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the unpacked sdist for one test."""
    import shutil

    return Path(shutil.copytree(vllm_sdist_pristine, tmp_path / vllm_sdist_pristine.name,
                                symlinks=True))
