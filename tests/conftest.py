"""Shared fixtures. Every test runs with its own TURBO_HOME so no test touches the checkout's state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TURBO_HOME", str(tmp_path / "turbo-home"))
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    yield
