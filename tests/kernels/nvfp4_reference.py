"""A numpy reference of vLLM 0.16's NVFP4 quantisation (cvt_warp_fp16_to_fp4), written from the
algorithm, for the GPU tests of kernels/nvfp4_quant.cu.

vLLM's arithmetic is IEEE fp32 (multiplies, round-to-nearest-even e4m3 and E2M1 conversions)
except for ``rcp.approx.ftz.f32``, whose results PTX does not pin down: the caller passes the
reciprocal to use. With the GPU's own instruction (the extension's ``rcp_approx``) the reference
is bit-exact; with a correctly rounded 1/x it shows how far an exact-math reference would drift.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np

Rcp = Callable[[np.ndarray], np.ndarray]
E2M1_NAN_CODE = 0x7  # the policy documented in kernels/e2m1.cuh


def rcp_exact(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.float32(1.0) / x.astype(np.float32)).astype(np.float32)


def e2m1_codes(x: np.ndarray) -> np.ndarray:
    """fp32 -> E2M1 codes (uint8, one per element) via ml_dtypes, with NaN -> 0x7."""
    x = x.astype(np.float32)
    clipped = np.clip(x, np.float32(-6.0), np.float32(6.0))  # NaN passes through clip
    codes = clipped.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
    return np.where(np.isnan(x), np.uint8(E2M1_NAN_CODE), codes).astype(np.uint8)


def e4m3_satfinite(x: np.ndarray) -> np.ndarray:
    """fp32 -> e4m3 bits, round to nearest even, saturating at 448; NaN -> 0x7F (cvt.satfinite)."""
    clipped = np.minimum(x.astype(np.float32), np.float32(448.0))  # x >= 0 or NaN here
    bits = clipped.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return np.where(np.isnan(x), np.uint8(0x7F), bits).astype(np.uint8)


def e4m3_to_float(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def block_scales(x: np.ndarray, gs: float, rcp: Rcp) -> np.ndarray:
    """e4m3 scale bits per 16-element block: [rows, cols/16]."""
    rows, cols = x.shape
    blocks = np.abs(x.astype(np.float32)).reshape(rows, cols // 16, 16)
    # __hmax2/__hmax drop a NaN operand: NaN only when all 16 are NaN.
    with np.errstate(invalid="ignore"):
        amax = np.fmax.reduce(blocks, axis=2)
    # vLLM writes rcp.approx.ftz(6.0f); ptxas folds that constant to the correctly rounded 1/6
    # (the SASS multiplies by 0x3E2AAAAB), so no instruction runs for it.
    r6 = np.float32(1.0) / np.float32(6.0)
    sf = np.float32(gs) * (amax * r6)
    return e4m3_satfinite(sf.astype(np.float32))


def quantize_codes(x: np.ndarray, sf_bits: np.ndarray, gs: float, rcp: Rcp) -> np.ndarray:
    """E2M1 codes [rows, cols] given the block scales (so data can be checked given any scales)."""
    rows, cols = x.shape
    sf = e4m3_to_float(sf_bits)
    rgs = rcp(np.array([gs], dtype=np.float32))[0]
    prod = (sf * rgs).astype(np.float32)
    with np.errstate(invalid="ignore"):
        out_scale = np.where(sf != 0, rcp(prod), np.float32(0.0)).astype(np.float32)
    scaled = x.astype(np.float32).reshape(rows, cols // 16, 16) * out_scale[:, :, None]
    return e2m1_codes(scaled.reshape(rows, cols))


def pack(codes: np.ndarray) -> np.ndarray:
    """Two codes a byte, element 2i in the low nibble (vLLM's order): [rows, cols/2] uint8."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def swizzle(sf_bits: np.ndarray) -> np.ndarray:
    """Linear [rows, kb] scale bytes into vLLM's 128x4 swizzled layout (padding zero), flat."""
    rows, kb = sf_bits.shape
    rows_pad, kb_pad = -(-rows // 128) * 128, -(-kb // 4) * 4
    out = np.zeros(rows_pad * kb_pad, dtype=np.uint8)
    r = np.arange(rows)[:, None]
    k = np.arange(kb)[None, :]
    off = (((r >> 7) * (kb_pad // 4) + (k >> 2)) << 9) | ((r & 31) << 4) | (((r >> 5) & 3) << 2) | (
        k & 3
    )
    out[off.ravel()] = sf_bits.ravel()
    return out.reshape(rows_pad, kb_pad)


def quantize(x: np.ndarray, gs: float, rcp: Rcp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed data, swizzled scales, linear scales) for x [rows, cols] (fp16/bf16 values)."""
    sf = block_scales(x, gs, rcp)
    return pack(quantize_codes(x, sf, gs, rcp)), swizzle(sf), sf
