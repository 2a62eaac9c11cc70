// NVFP4 quantisation (bf16/fp16 -> packed E2M1 + e4m3 block scales), vLLM 0.16's arithmetic.
//
// Per block of 16 elements along a row (vLLM's cvt_warp_fp16_to_fp4):
//   amax = max |x| in the input type (NaN ignored unless all 16 are NaN);
//   SF   = gs * (amax * rcp.approx.ftz(6));  SF -> e4m3 (rn, satfinite) -> back to float;
//   out_scale = SF != 0 ? rcp.approx.ftz(SF * rcp.approx.ftz(gs)) : 0;
//   codes = E2M1(x * out_scale), element i of 8 in nibble i of a uint32.
// Scales go to the swizzled 128x4 layout vLLM's CUTLASS/FlashInfer GEMMs read (padding rows and
// columns zeroed) and, optionally, to a plain row-major [rows, cols/16] array.
//
// Thread layout: one thread per 16-element block (vLLM uses two threads of 8 and a shuffle; the
// arithmetic is the same, and one thread per block halves the per-block work: the scale and the
// loop bookkeeping are done once). A flat grid-stride loop walks (row, block) incrementally.
//
// The conversion is a template parameter so the benchmark can swap it: turbo_e2m1x8 (hardware
// where the target has it, else the software path), the seed's comparison chain, CUDA's own
// __nv_cvt_float2_to_fp4x2, or none (the ceiling: the same kernel with the conversion removed).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "e2m1.cuh"
#include "nvfp4_quant.h"

// Full occupancy needs <= 32 registers at 8 CTAs of 256 per SM (2048 threads: Hopper, datacentre
// Blackwell); sm_86/89/120/121 hold 1536 threads per SM, i.e. 6 CTAs.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || \
                               __CUDA_ARCH__ == 890 || __CUDA_ARCH__ >= 1200)
#define TURBO_NVFP4_MIN_CTAS 6
#else
#define TURBO_NVFP4_MIN_CTAS 8
#endif

namespace {

__device__ __forceinline__ float rcp_approx_ftz(float a) {
  float b;
  asm volatile("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(b) : "f"(a));
  return b;
}

// The seed's comparison chain (written from its thresholds): round-to-nearest-even by
// comparing |x| with the midpoints; NaN falls through to 7 with its sign kept.
__device__ __forceinline__ uint32_t chain_code(float x) {
  const float a = fabsf(x);
  const uint32_t idx = a <= 0.25f ? 0u
                       : a < 0.75f ? 1u
                       : a <= 1.25f ? 2u
                       : a < 1.75f ? 3u
                       : a <= 2.5f ? 4u
                       : a < 3.5f ? 5u
                       : a <= 5.0f ? 6u
                                   : 7u;
  return idx | ((__float_as_uint(x) >> 28) & 8u);
}

template <int CONV>
__device__ __forceinline__ uint32_t convert8(const float (&v)[8]) {
  if constexpr (CONV == TURBO_NVFP4_CONV_TURBO) {
    return turbo_e2m1x8(v);
  } else if constexpr (CONV == TURBO_NVFP4_CONV_CHAIN) {
    uint32_t r = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) r |= chain_code(v[j]) << (4 * j);
    return r;
  } else if constexpr (CONV == TURBO_NVFP4_CONV_CUDA) {
    uint32_t r = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // .x goes to the low nibble: vLLM's order.
      const uint32_t b = __nv_cvt_float2_to_fp4x2(make_float2(v[2 * j], v[2 * j + 1]), __NV_E2M1,
                                                  cudaRoundNearest);
      r |= (b & 0xFFu) << (8 * j);
    }
    return r;
  } else {
    // No conversion: fold the scaled values so that nothing before this point is dead code.
    return __float_as_uint(v[0]) ^ __float_as_uint(v[1]) ^ __float_as_uint(v[2]) ^
           __float_as_uint(v[3]) ^ __float_as_uint(v[4]) ^ __float_as_uint(v[5]) ^
           __float_as_uint(v[6]) ^ __float_as_uint(v[7]);
  }
}

template <typename T>
struct Vec2;
template <>
struct Vec2<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
};
template <>
struct Vec2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) {
    return __bfloat1622float2(v);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

__device__ __forceinline__ int64_t swizzled_offset(int row, int k, int k_tiles) {
  return (static_cast<int64_t>(row >> 7) * k_tiles + (k >> 2)) << 9 | (row & 31) << 4 |
         ((row >> 5) & 3) << 2 | (k & 3);
}

template <typename T, int CONV>
__global__ void __launch_bounds__(256, TURBO_NVFP4_MIN_CTAS) quant_kernel(int rows, int cols, const uint4* __restrict__ in,
                                                    const float* __restrict__ global_scale,
                                                    uint2* __restrict__ out,
                                                    uint8_t* __restrict__ sf_swizzled,
                                                    uint8_t* __restrict__ sf_linear) {
  using T2 = typename Vec2<T>::type;
  const int kb = cols / 16;  // scale blocks per row
  const int k_tiles = (kb + 3) / 4;
  const int64_t total = static_cast<int64_t>(rows) * kb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float gs = *global_scale;

  // Walk (row, block) incrementally: no 64-bit division per iteration.
  int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int row_step = static_cast<int>(stride / kb);
  const int col_step = static_cast<int>(stride % kb);
  int row = static_cast<int>(idx / kb);
  int k = static_cast<int>(idx % kb);

  for (; idx < total; idx += stride) {
    // One thread per 16-element block: two 16-byte loads side by side (a warp's pair of loads
    // covers 1 KiB contiguously), the amax needs no shuffle, and the scale is computed once.
    uint4 raw[2];
    raw[0] = __ldg(in + 2 * idx);
    raw[1] = __ldg(in + 2 * idx + 1);
    const T2* e = reinterpret_cast<const T2*>(raw);

    T2 m2 = __habs2(e[0]);
#pragma unroll
    for (int j = 1; j < 8; ++j) m2 = __hmax2(m2, __habs2(e[j]));
    const float amax = Vec2<T>::to_float(__hmax(m2.x, m2.y));

    float sf = gs * (amax * rcp_approx_ftz(6.0f));
    const __nv_fp8_e4m3 sf8(sf);  // cvt.rn.satfinite.e4m3: sf >= 0 or NaN here
    sf = static_cast<float>(sf8);
    const float out_scale = sf != 0.0f ? rcp_approx_ftz(sf * rcp_approx_ftz(gs)) : 0.0f;

    float v[16];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 f = Vec2<T>::to_float2(e[j]);
      v[2 * j] = f.x * out_scale;
      v[2 * j + 1] = f.y * out_scale;
    }
    const float(&lo)[8] = *reinterpret_cast<const float(*)[8]>(&v[0]);
    const float(&hi)[8] = *reinterpret_cast<const float(*)[8]>(&v[8]);
    out[idx] = make_uint2(convert8<CONV>(lo), convert8<CONV>(hi));

    const uint8_t byte = sf8.__x;
    if (sf_swizzled) sf_swizzled[swizzled_offset(row, k, k_tiles)] = byte;
    if (sf_linear) sf_linear[idx] = byte;

    row += row_step;
    k += col_step;
    if (k >= kb) {
      k -= kb;
      ++row;
    }
  }
}

// Zero the swizzled layout's padding: rows [rows, round_up(rows, 128)) and scale columns
// [kb, round_up(kb, 4)) of every row. GEMMs read the whole 128x4 tiles.
__global__ void zero_padding_kernel(int rows, int cols, uint8_t* __restrict__ sf_swizzled) {
  const int kb = cols / 16;
  const int kb_pad = (kb + 3) & ~3;
  const int k_tiles = kb_pad / 4;
  const int rows_pad = (rows + 127) & ~127;
  const int pad_cols = kb_pad - kb;
  // Work items: every (row, k) of the padding rows, plus (row, k >= kb) of the real rows.
  const int64_t pad_row_items = static_cast<int64_t>(rows_pad - rows) * kb_pad;
  const int64_t pad_col_items = static_cast<int64_t>(rows) * pad_cols;
  const int64_t total = pad_row_items + pad_col_items;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int row, k;
    if (i < pad_row_items) {
      row = rows + static_cast<int>(i / kb_pad);
      k = static_cast<int>(i % kb_pad);
    } else {
      const int64_t j = i - pad_row_items;
      row = static_cast<int>(j / pad_cols);
      k = kb + static_cast<int>(j % pad_cols);
    }
    sf_swizzled[swizzled_offset(row, k, k_tiles)] = 0;
  }
}

__global__ void rcp_approx_kernel(const float* __restrict__ in, float* __restrict__ out,
                                  int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = rcp_approx_ftz(in[i]);
}

template <typename T>
cudaError_t launch_typed(int conv, int rows, int cols, const void* in, const float* gs, void* out,
                         uint8_t* sf_swizzled, uint8_t* sf_linear, int grid,
                         cudaStream_t stream) {
  const uint4* vin = static_cast<const uint4*>(in);
  uint2* vout = static_cast<uint2*>(out);
  switch (conv) {
    case TURBO_NVFP4_CONV_TURBO:
      quant_kernel<T, TURBO_NVFP4_CONV_TURBO>
          <<<grid, 256, 0, stream>>>(rows, cols, vin, gs, vout, sf_swizzled, sf_linear);
      break;
    case TURBO_NVFP4_CONV_CHAIN:
      quant_kernel<T, TURBO_NVFP4_CONV_CHAIN>
          <<<grid, 256, 0, stream>>>(rows, cols, vin, gs, vout, sf_swizzled, sf_linear);
      break;
    case TURBO_NVFP4_CONV_CUDA:
      quant_kernel<T, TURBO_NVFP4_CONV_CUDA>
          <<<grid, 256, 0, stream>>>(rows, cols, vin, gs, vout, sf_swizzled, sf_linear);
      break;
    case TURBO_NVFP4_CONV_NONE:
      quant_kernel<T, TURBO_NVFP4_CONV_NONE>
          <<<grid, 256, 0, stream>>>(rows, cols, vin, gs, vout, sf_swizzled, sf_linear);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t turbo_nvfp4_quant(int dtype, int conv, int rows, int cols, const void* in,
                              const float* global_scale, void* out, uint8_t* sf_swizzled,
                              uint8_t* sf_linear, int num_sms, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || cols % 16 != 0) return cudaErrorInvalidValue;
  const int64_t threads = static_cast<int64_t>(rows) * (cols / 16);
  // Enough CTAs to fill every SM (8 x 256 threads = full occupancy), no more than the work.
  const int64_t want = (threads + 255) / 256;
  const int grid = static_cast<int>(want < int64_t(num_sms) * 8 ? want : int64_t(num_sms) * 8);
  if (sf_swizzled) {
    const int kb = cols / 16;
    const bool padded = (rows % 128) != 0 || (kb % 4) != 0;
    if (padded) {
      zero_padding_kernel<<<num_sms, 256, 0, stream>>>(rows, cols, sf_swizzled);
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
  }
  if (dtype == TURBO_NVFP4_DTYPE_F16)
    return launch_typed<__half>(conv, rows, cols, in, global_scale, out, sf_swizzled, sf_linear,
                                grid, stream);
  if (dtype == TURBO_NVFP4_DTYPE_BF16)
    return launch_typed<__nv_bfloat16>(conv, rows, cols, in, global_scale, out, sf_swizzled,
                                       sf_linear, grid, stream);
  return cudaErrorInvalidValue;
}

cudaError_t turbo_rcp_approx(const float* in, float* out, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = (n + 255) / 256;
  rcp_approx_kernel<<<static_cast<int>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(in, out,
                                                                                       n);
  return cudaGetLastError();
}
