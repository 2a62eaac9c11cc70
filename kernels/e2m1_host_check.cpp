// Host-side helpers for the exhaustive E2M1 check (tests/kernels/test_e2m1_host.py).
//
// Built as a shared library and called through ctypes, chunk by chunk, so that the Python side
// can compare the same codes against ml_dtypes while this side compares them against CUTLASS.
// Compile: g++ -O2 -std=c++17 -shared -fPIC -I<cutlass include> -DTURBO_WITH_CUTLASS ...

#include <stdint.h>

#include "e2m1.cuh"

#if defined(TURBO_WITH_CUTLASS)
#include <cutlass/float_subbyte.h>
#endif

extern "C" {

// Codes of the bit patterns [start, start + count) into out[count] (one code per byte).
void turbo_e2m1_codes(uint32_t start, uint32_t count, uint8_t* out) {
  for (uint32_t i = 0; i < count; ++i) {
    out[i] = turbo_e2m1_from_float(turbo_e2m1_u2f(start + i));
  }
}

// Compares turbo_e2m1_from_float with cutlass::float_e2m1_t on [start, start + count).
// Returns the number of mismatches on non-NaN inputs (-1 when built without CUTLASS); counts
// NaN inputs and NaN inputs whose code differs from the documented policy (+6, 0x7).
// The first mismatching pattern (if any) goes to *first_bad.
int64_t turbo_e2m1_check_cutlass(uint32_t start, uint32_t count, uint64_t* nan_total,
                                 uint64_t* nan_bad, uint64_t* first_bad) {
  int64_t bad = 0;
  uint64_t nans = 0, nbad = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t u = start + i;
    const float x = turbo_e2m1_u2f(u);
    const uint8_t ours = turbo_e2m1_from_float(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
      ++nans;
      nbad += ours != 0x7;
      continue;
    }
#if defined(TURBO_WITH_CUTLASS)
    const uint8_t ref = cutlass::float_e2m1_t(x).raw() & 0xF;
    if (ours != ref) {
      if (bad == 0) *first_bad = u;
      ++bad;
    }
#else
    bad = -1;
#endif
  }
  *nan_total += nans;
  *nan_bad += nbad;
  return bad;
}

// The pair and the eight through the public API (host build), for the packing-order tests.
uint8_t turbo_e2m1x2_host(float a, float b) { return turbo_e2m1x2(a, b); }

uint32_t turbo_e2m1x8_host(const float* v) {
  const float a[8] = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
  return turbo_e2m1x8(a);
}

}  // extern "C"
