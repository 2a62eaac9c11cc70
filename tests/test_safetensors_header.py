"""turbo.safetensors_header against files written by the safetensors library itself, and the
damage a copy can carry (each refused with its reason; the weights are never read)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from turbo.safetensors_header import BadHeader, read


def real_file(path: Path) -> Path:
    save_file(
        {"a.weight": np.zeros((4, 3), dtype=np.float32), "b": np.ones((5,), dtype=np.uint8)},
        str(path),
        metadata={"format": "pt"},
    )
    return path


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    n = len(blob) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def test_reads_what_the_safetensors_library_wrote(tmp_path: Path) -> None:
    path = real_file(tmp_path / "x.safetensors")
    header = read(path)
    by_name = {t.name: t for t in header.tensors}
    assert set(by_name) == {"a.weight", "b"}  # __metadata__ is not a tensor
    assert (by_name["a.weight"].dtype, by_name["a.weight"].shape) == ("F32", (4, 3))
    assert (by_name["b"].dtype, by_name["b"].shape) == ("U8", (5,))
    assert by_name["a.weight"].nbytes == 48 and by_name["b"].nbytes == 5
    assert header.size == path.stat().st_size == header.expected_size
    assert sorted(header.names) == ["a.weight", "b"]


def test_size_is_reported_not_judged(tmp_path: Path) -> None:
    path = real_file(tmp_path / "x.safetensors")
    full = path.read_bytes()
    path.write_bytes(full[:-7])
    header = read(path)
    assert header.expected_size - header.size == 7


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_bytes(b"\x01\x02"), "is 2 bytes, shorter than a safetensors header"),
        (lambda p: p.write_bytes(b"\xff" * 8 + b"{}"), "-byte header in a 10-byte file"),
        (lambda p: raw_file(p, {}, length=2**40), "declares a 1099511627776-byte header"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{nope"), "has a header that is not JSON"),
        (lambda p: raw_file(p, [1, 2]), "has a header that is not a JSON object"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [1]}}),
         "tensor 't' has a malformed entry"),
        (lambda p: raw_file(p, {"t": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "tensor 't' has a malformed entry"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}}),
         "tensor 't' has a malformed entry"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}),
         "tensor 't' has offsets 4..0"),
    ],
)
def test_damage_is_refused_with_its_reason(tmp_path: Path, make: object, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    make(path)  # type: ignore[operator]
    with pytest.raises(BadHeader) as exc:
        read(path)
    assert why in str(exc.value)


def test_an_unreadable_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read(tmp_path / "missing.safetensors")
