"""The host build of kernels/e2m1.cuh: known values, packing order, and all 2^32 inputs against
CUTLASS's cutlass::float_e2m1_t and ml_dtypes.float4_e2m1fn (non-NaN), NaN against the policy."""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
ml_dtypes = pytest.importorskip("ml_dtypes")

from turbo import kernels  # noqa: E402
from turbo.errors import TurboError  # noqa: E402

CHUNK = 1 << 24
NAN_PATTERNS = 2 * ((1 << 23) - 1)


@pytest.fixture(scope="module")
def lib_path() -> Path:
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler on this machine")
    try:
        return kernels.host_check_library()
    except TurboError as err:
        if "nvidia-cutlass" in str(err) or "CUDA headers" in str(err):
            pytest.skip(str(err))
        raise


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.turbo_e2m1_codes.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
    lib.turbo_e2m1_check_cutlass.restype = ctypes.c_int64
    lib.turbo_e2m1_check_cutlass.argtypes = [ctypes.c_uint32, ctypes.c_uint32] + [
        ctypes.POINTER(ctypes.c_uint64)
    ] * 3
    lib.turbo_e2m1x2_host.restype = ctypes.c_uint8
    lib.turbo_e2m1x2_host.argtypes = [ctypes.c_float, ctypes.c_float]
    lib.turbo_e2m1x8_host.restype = ctypes.c_uint32
    lib.turbo_e2m1x8_host.argtypes = [ctypes.POINTER(ctypes.c_float)]
    return lib


def _code(lib: ctypes.CDLL, bits: int) -> int:
    out = (ctypes.c_uint8 * 1)()
    lib.turbo_e2m1_codes(bits, 1, out)
    return int(out[0])


def _bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


KNOWN = [
    (0.0, 0x0), (-0.0, 0x8), (1e-40, 0x0), (-1e-40, 0x8), (-0.1, 0x8),
    (0.25, 0x0), (0.2500001, 0x1), (0.5, 0x1), (0.75, 0x2), (0.7499999, 0x1),
    (1.0, 0x2), (1.25, 0x2), (1.25000012, 0x3), (1.5, 0x3), (1.75, 0x4), (2.0, 0x4),
    (2.5, 0x4), (2.5000002, 0x5), (3.0, 0x5), (3.5, 0x6), (4.0, 0x6), (5.0, 0x6),
    (5.0000005, 0x7), (6.0, 0x7), (7.0, 0x7), (1e30, 0x7), (math.inf, 0x7),
    (-3.0, 0xD), (-5.0, 0xE), (-6.5, 0xF), (-math.inf, 0xF),
]


@pytest.mark.parametrize(("value", "code"), KNOWN)
def test_known_values(lib_path: Path, value: float, code: int) -> None:
    assert _code(_load(lib_path), _bits(value)) == code


@pytest.mark.parametrize("bits", [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF])
def test_nan_gives_plus_six(lib_path: Path, bits: int) -> None:
    assert _code(_load(lib_path), bits) == 0x7


def test_pair_is_ptx_order_and_eight_is_vllm_order(lib_path: Path) -> None:
    lib = _load(lib_path)
    assert lib.turbo_e2m1x2_host(1.0, 6.0) == 0x27  # a -> upper nibble, b -> lower
    assert lib.turbo_e2m1x2_host(-0.5, 3.0) == 0x95
    vals = (ctypes.c_float * 8)(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    assert lib.turbo_e2m1x8_host(vals) == 0x76543210  # element i in nibble i
    vals = (ctypes.c_float * 8)(-6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5)
    assert lib.turbo_e2m1x8_host(vals) == 0x9000000F


def _check_chunk(args: tuple[str, int]) -> tuple[int, int, int, int, int, int]:
    """One chunk: (cutlass mismatches, ml_dtypes mismatches, NaN inputs, NaN off-policy,
    first cutlass mismatch, first ml_dtypes mismatch)."""
    path, start = args
    lib = _load(Path(path))
    nan_total, nan_bad, first = ctypes.c_uint64(0), ctypes.c_uint64(0), ctypes.c_uint64(0)
    cut_bad = lib.turbo_e2m1_check_cutlass(start, CHUNK, ctypes.byref(nan_total),
                                           ctypes.byref(nan_bad), ctypes.byref(first))
    ours = np.empty(CHUNK, dtype=np.uint8)
    lib.turbo_e2m1_codes(start, CHUNK, ours.ctypes.data)
    x = np.arange(start, start + CHUNK, dtype=np.uint32).view(np.float32)
    ref = x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
    diff = (ours != ref) & ~np.isnan(x)
    ml_bad = int(diff.sum())
    ml_first = start + int(np.argmax(diff)) if ml_bad else 0
    return (int(cut_bad), ml_bad, int(nan_total.value), int(nan_bad.value),
            int(first.value), ml_first)


@pytest.mark.slow
def test_exhaustive_against_cutlass_and_ml_dtypes(lib_path: Path,
                                                 record_property: pytest.RecordProperty) -> None:
    jobs = os.cpu_count() or 1
    t0 = time.monotonic()
    starts = [(str(lib_path), s) for s in range(0, 1 << 32, CHUNK)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(_check_chunk, starts, chunksize=4))
    seconds = time.monotonic() - t0
    cut_bad = sum(r[0] for r in results)
    ml_bad = sum(r[1] for r in results)
    nan_total = sum(r[2] for r in results)
    nan_bad = sum(r[3] for r in results)
    firsts = [hex(r[4]) for r in results if r[0]] + [hex(r[5]) for r in results if r[1]]
    record_property("seconds", round(seconds, 1))
    print(f"\nexhaustive E2M1 host check: 2^32 inputs on {jobs} processes in {seconds:.1f} s; "
          f"CUTLASS mismatches {cut_bad}, ml_dtypes mismatches {ml_bad} (non-NaN), "
          f"NaN inputs {nan_total}, NaN off-policy {nan_bad}")
    assert cut_bad == 0 and ml_bad == 0, f"first mismatching patterns: {firsts[:4]}"
    assert nan_total == NAN_PATTERNS  # every NaN pattern was seen ...
    assert nan_bad == 0  # ... and each gave +6 (0x7)
