"""The pins file is complete, well-formed, and its errors are one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turbo.errors import TurboError
from turbo.pins import load_pins, pins_path


def test_pins_have_the_issue_values() -> None:
    pins = load_pins()
    assert re.fullmatch(r"[0-9a-f]{40}", pins.vllm.commit)
    assert pins.vllm.commit == "3b30e6150777de549b11f67dde3ecc0d3b1f3f50"
    assert pins.toolchain.cuda == "13.0" and pins.toolchain.python == "3.12"
    assert pins.toolchain.torch == "2.10.0" and pins.toolchain.triton == "3.6.0"
    assert pins.toolchain.torch_index.endswith("/cu130")
    assert pins.model.path == "/data/tensordata/qwen3-next-80B-Thinking-NVFP4"
    assert pins.serve.port == 8011
    assert pins.model.repo in pins.model.variants.values()


def test_missing_section_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "pins.toml"
    bad.write_text(pins_path().read_text().replace("[serve]", "[srv]"))
    with pytest.raises(TurboError, match=r"srv: is not a known key. Did you mean serve\?"):
        load_pins(bad)


def test_unknown_key_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "pins.toml"
    bad.write_text(pins_path().read_text().replace("[build]\n", "[build]\nbogus = 1\n"))
    with pytest.raises(TurboError, match=r"build\.bogus: is not a known key"):
        load_pins(bad)
