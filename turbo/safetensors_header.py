"""The header of a safetensors file, read without touching the weights.

The format: 8 bytes of little-endian length, then that many bytes of JSON: an object naming
each tensor's dtype, shape and byte range (``data_offsets``, relative to the end of the header)
in the data that follows, plus an optional ``__metadata__``. Both the model adoption check and
the roofline read shards through :func:`read`; each words its own advice around a
:class:`BadHeader`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# No real checkpoint's header comes near this; a larger length means a damaged file.
MAX_HEADER = 100 * 2**20


class BadHeader(ValueError):
    """The file is not a safetensors file; the message says why, as a phrase about the file
    ("is 5 bytes, shorter than ...", "has a header that is not JSON ...")."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    size: int  # of the whole file, in bytes
    header_len: int
    tensors: tuple[TensorEntry, ...]

    @property
    def expected_size(self) -> int:
        """What the file's size must be: the length prefix, the header, the last tensor's end."""
        return 8 + self.header_len + max((t.end for t in self.tensors), default=0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)


def read(path: Path) -> Header:
    """The header of ``path``. OSError when the file cannot be read, BadHeader when it is not
    a safetensors file. The file's size is reported, not judged: a caller decides whether a
    file longer or shorter than :attr:`Header.expected_size` is acceptable."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadHeader(f"is {size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER):
            raise BadHeader(f"declares a {n}-byte header in a {size}-byte file")
        try:
            meta = json.loads(fh.read(n))
        except ValueError as exc:  # not UTF-8, or not JSON
            raise BadHeader(f"has a header that is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BadHeader("has a header that is not a JSON object")
    tensors = tuple(_entry(str(k), v) for k, v in meta.items() if k != "__metadata__")
    return Header(size, n, tensors)


def _entry(name: str, info: object) -> TensorEntry:
    malformed = BadHeader(f"tensor {name!r} has a malformed entry")
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise malformed
    try:
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise malformed from exc
    if not 0 <= begin <= end:
        raise BadHeader(f"tensor {name!r} has offsets {begin}..{end}")
    return TensorEntry(name, info["dtype"], shape, begin, end)
