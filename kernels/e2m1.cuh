// turbo_e2m1: fp32 -> E2M1 (FP4) conversion for host and device code.
//
// Part of vllm-turbo (kernels/e2m1.cuh). Self-contained: only the C++ standard headers, and
// CUDA's built-ins when compiled by nvcc. vLLM carries these exact bytes as
// csrc/quantization/fp4/turbo_e2m1.cuh, so every public name is prefixed `turbo_` and stable.
//
// E2M1 code: sign << 3 | index, magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6} for index 0..7.
// Semantics (those of PTX `cvt.rn.satfinite.e2m1x2.f32`):
//   * round to nearest, ties to even;
//   * |x| > 6 and +-Inf saturate to +-6 (0x7 / 0xF);
//   * -0.0 and negatives that round to zero give 0x8 (negative zero);
//   * NaN (any sign, any payload) gives +6 (0x7). PTX leaves NaN unspecified; this is what
//     NVIDIA's own emulation in CUDA 13.0's cuda_fp4.hpp returns, so host, software and (we
//     expect) hardware agree. `invoke kernels.probe` measures what a GPU's instruction does.
//
// Paths:
//   * hardware: `cvt.rn.satfinite.e2m1x2.f32`, used in device code exactly when the compile
//     target has it. ptxas (CUDA 13.0) accepts it for the arch-specific and family-specific
//     Blackwell targets (sm_100a/f, sm_103a/f, sm_110a/f, sm_120a/f, sm_121a/f; sm_101a in
//     CUDA 12.9) and rejects it for plain sm_90/100/103/110/120/121 and for sm_90a;
//   * software: everywhere else (host code, plain sm_121, Hopper ...). Define
//     TURBO_E2M1_FORCE_SOFTWARE (any value) to use it on every target.
//
// Macros:
//   TURBO_E2M1_TARGET_HAS_CVT  1 in a device compile pass whose target has the instruction;
//   TURBO_E2M1_HW              1 when the hardware path is used (TARGET_HAS_CVT and not forced);
//   both are 0 otherwise (and always 0 in host code).
//
// The software path ("magic add", exact on all 2^32 inputs; proof in docs/kernels.md):
//   c = clamp(x, -6, 6)        two min/max; NaN -> +6, -0.0 and the sign of tiny values kept
//   e = max(binade(|c|), 1.0)  exponent bits only
//   m = e * 2^22 + 6 ulp       in a binade whose ulp is the E2M1 step of |c|'s binade
//   s = |c| + m                ONE correctly rounded add does round-to-nearest-even
//   bits(s) = bits(m) + n, n = round(|c| / step); code = 2 * log2(e) + n = low 3 bits of
//   bits(s) + bits(s) >> 22, computed in bits 28..30 by one multiply; the sign from bits(c).
// Nine SASS instructions per element on sm_90/sm_121 including the packing (BENCHMARKS.md).
//
// Do not compile the host path with a non-default floating-point rounding mode; -ffast-math is
// harmless (a single add cannot be re-associated).

#ifndef TURBO_E2M1_CUH_
#define TURBO_E2M1_CUH_

#include <stdint.h>
#if !defined(__CUDA_ARCH__)
#include <string.h>
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) &&                  \
    (__CUDA_ARCH_FAMILY_SPECIFIC__ == 1000 || __CUDA_ARCH_FAMILY_SPECIFIC__ == 1010 ||  \
     __CUDA_ARCH_FAMILY_SPECIFIC__ == 1030 || __CUDA_ARCH_FAMILY_SPECIFIC__ == 1100 ||  \
     __CUDA_ARCH_FAMILY_SPECIFIC__ == 1200 || __CUDA_ARCH_FAMILY_SPECIFIC__ == 1210)
// Every "a" and "f" target defines __CUDA_ARCH_FAMILY_SPECIFIC__ (sm_121a: 1210, sm_120f:
// 1200); plain targets define neither it nor __CUDA_ARCH_SPECIFIC__. sm_90a defines 900 and
// lacks the instruction, hence the explicit list rather than ">= 1000" (future families are
// not assumed to have it until ptxas says so).
#define TURBO_E2M1_TARGET_HAS_CVT 1
#else
#define TURBO_E2M1_TARGET_HAS_CVT 0
#endif

#if TURBO_E2M1_TARGET_HAS_CVT && !defined(TURBO_E2M1_FORCE_SOFTWARE)
#define TURBO_E2M1_HW 1
#else
#define TURBO_E2M1_HW 0
#endif

#if defined(__CUDACC__)
#define TURBO_E2M1_FN __host__ __device__ __forceinline__
#else
#define TURBO_E2M1_FN inline
#endif

// ------------------------------------------------------------------------ bit-level helpers
TURBO_E2M1_FN uint32_t turbo_e2m1_f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

TURBO_E2M1_FN float turbo_e2m1_u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// ------------------------------------------------------------------------ software path
// Always available (also on hardware targets, for comparisons such as `kernels.probe`).
TURBO_E2M1_FN uint32_t turbo_e2m1_sw_top(float x) {
#if defined(__CUDA_ARCH__)
  // fminf returns the non-NaN operand: NaN -> +6 whatever its sign bit. One FMNMX each.
  const float c = fmaxf(fminf(x, 6.0f), -6.0f);
#else
  float c = (x < 6.0f) ? x : 6.0f;  // false for NaN: NaN -> +6
  c = (c > -6.0f) ? c : -6.0f;      // -0.0 > -6 is true: -0.0 is kept
#endif
  const uint32_t cb = turbo_e2m1_f2u(c);
  // Binade of |c| as a float with zero mantissa, at least 1.0: below 1.0 the E2M1 step (0.5)
  // is that of [1, 2), which is what makes one formula cover the subnormal codes.
  const uint32_t e_raw = cb & 0x7F800000u;
  const uint32_t e = e_raw > 0x3F800000u ? e_raw : 0x3F800000u;
  // m = e * 2^22 + 6 ulp: in the binade [e * 2^22, e * 2^23), whose ulp (e / 2) is the E2M1
  // step of |c|'s binade. The 6 ulp are even, so ties still round to an even E2M1 mantissa.
  const uint32_t m = e + (22u << 23) + 6u;
#if defined(__CUDA_ARCH__)
  // |c| folds into the add as an operand modifier; __fadd_rn is never contracted or reordered.
  const float s = __fadd_rn(fabsf(c), turbo_e2m1_u2f(m));
#else
  const float mag = turbo_e2m1_u2f(cb & 0x7FFFFFFFu);
  const float s = mag + turbo_e2m1_u2f(m);
#endif
  // bits(s) = e' + 6 + n, e' = bits(e * 2^22), n = round(|c| / step) <= 4. bits(s) >> 22 is
  // 2 * biased_exp(e') = 2 * log2(e) + 298, and 6 + 298 = 304 = 0 mod 8: the low three bits of
  // bits(s) + bits(s) >> 22 are n + 2 * log2(e), the magnitude code. One multiply computes that
  // sum already in bits 28..30: sb * (2^28 + 2^6) = (sb << 28) + (sb << 6), whose bits below 28
  // come from (sb << 6) alone, so nothing carries into them.
  const uint32_t sb = turbo_e2m1_f2u(s);
  const uint32_t t = sb * 0x10000040u;
  // Code in bits 31..28 (sign from c), bits below are don't-care: the packers shift it out.
#if defined(__CUDA_ARCH__)
  // One LOP3 bit-select (c ? b : a, LUT 0xD8). Written out because nvcc, seeing that t's low
  // six bits are zero, narrows the mask and splits the select into two LOP3s.
  uint32_t w;
  asm("lop3.b32 %0, %1, %2, 0x80000000, 0xD8;" : "=r"(w) : "r"(t), "r"(cb));
  return w;
#else
  return (t & 0x7FFFFFFFu) | (cb & 0x80000000u);
#endif
}

// The 4-bit code in the top nibble of the result, bits below are don't-care.
// (The software path's natural form: packing eight of them is one funnel shift each.)
TURBO_E2M1_FN uint32_t turbo_e2m1_sw(float x) { return turbo_e2m1_sw_top(x) >> 28; }

// acc << 4 | top nibble of w: one SHF.L (funnel shift) on the GPU.
TURBO_E2M1_FN uint32_t turbo_e2m1_push(uint32_t acc, uint32_t w) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_l(w, acc, 4);
#else
  return acc << 4 | w >> 28;
#endif
}

TURBO_E2M1_FN uint8_t turbo_e2m1_from_float_sw(float x) {
  return static_cast<uint8_t>(turbo_e2m1_sw(x));
}

TURBO_E2M1_FN uint8_t turbo_e2m1x2_sw(float a, float b) {
  return static_cast<uint8_t>(turbo_e2m1_push(turbo_e2m1_sw(a), turbo_e2m1_sw_top(b)));
}

TURBO_E2M1_FN uint32_t turbo_e2m1x8_sw(float v0, float v1, float v2, float v3, float v4,
                                       float v5, float v6, float v7) {
  // Highest element first: each push moves the earlier ones up a nibble.
  uint32_t acc = turbo_e2m1_sw(v7);
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v6));
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v5));
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v4));
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v3));
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v2));
  acc = turbo_e2m1_push(acc, turbo_e2m1_sw_top(v1));
  return turbo_e2m1_push(acc, turbo_e2m1_sw_top(v0));
}

// ------------------------------------------------------------------------ hardware path
#if TURBO_E2M1_TARGET_HAS_CVT
// Only defined in device passes whose target has the instruction (`kernels.probe` uses it
// directly, even when TURBO_E2M1_FORCE_SOFTWARE is set).
__device__ __forceinline__ uint8_t turbo_e2m1x2_hw(float a, float b) {
  // Widen the .b8 result with mov into a b16 pair, as cuda_fp4.hpp does: `cvt.u32.u8` of a
  // .b8 register crashes ptxas 13.0.88 (segmentation fault) in larger kernels.
  uint16_t r;
  asm("{\n\t.reg .b8 t;\n\tcvt.rn.satfinite.e2m1x2.f32 t, %1, %2;\n\tmov.b16 %0, {t, 0};\n}"
      : "=h"(r)
      : "f"(a), "f"(b));
  return static_cast<uint8_t>(r);
}

__device__ __forceinline__ uint32_t turbo_e2m1x8_hw(float v0, float v1, float v2, float v3,
                                                    float v4, float v5, float v6, float v7) {
  uint32_t r;
  asm("{\n\t.reg .b8 b0, b1, b2, b3;\n"
      "\tcvt.rn.satfinite.e2m1x2.f32 b0, %2, %1;\n"
      "\tcvt.rn.satfinite.e2m1x2.f32 b1, %4, %3;\n"
      "\tcvt.rn.satfinite.e2m1x2.f32 b2, %6, %5;\n"
      "\tcvt.rn.satfinite.e2m1x2.f32 b3, %8, %7;\n"
      "\tmov.b32 %0, {b0, b1, b2, b3};\n}"
      : "=r"(r)
      : "f"(v0), "f"(v1), "f"(v2), "f"(v3), "f"(v4), "f"(v5), "f"(v6), "f"(v7));
  return r;
}
#endif

// ------------------------------------------------------------------------ public API
// Scalar: the 4-bit code in the low nibble.
TURBO_E2M1_FN uint8_t turbo_e2m1_from_float(float x) {
#if TURBO_E2M1_HW
  return static_cast<uint8_t>(turbo_e2m1x2_hw(0.0f, x) & 0xFu);
#else
  return turbo_e2m1_from_float_sw(x);
#endif
}

// Pair, in PTX operand order: `a` goes to the upper nibble, `b` to the lower one.
TURBO_E2M1_FN uint8_t turbo_e2m1x2(float a, float b) {
#if TURBO_E2M1_HW
  return turbo_e2m1x2_hw(a, b);
#else
  return turbo_e2m1x2_sw(a, b);
#endif
}

// Eight values, in vLLM's order: element i in nibble i of a little-endian uint32 (element 0
// in the low nibble of byte 0).
TURBO_E2M1_FN uint32_t turbo_e2m1x8(float v0, float v1, float v2, float v3, float v4, float v5,
                                    float v6, float v7) {
#if TURBO_E2M1_HW
  return turbo_e2m1x8_hw(v0, v1, v2, v3, v4, v5, v6, v7);
#else
  return turbo_e2m1x8_sw(v0, v1, v2, v3, v4, v5, v6, v7);
#endif
}

TURBO_E2M1_FN uint32_t turbo_e2m1x8(const float (&v)[8]) {
  return turbo_e2m1x8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
}

#endif  // TURBO_E2M1_CUH_
