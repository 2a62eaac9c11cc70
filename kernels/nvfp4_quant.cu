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

// CTAs per SM the launcher asks for (the device side caps registers for TURBO_NVFP4_MIN_CTAS;
// on 1536-thread SMs the extra CTAs simply wait for a slot).
#define TURBO_NVFP4_HOST_CTAS_PER_SM 8

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

// vLLM's per-block scale: amax (already reduced, as float) -> e4m3 bits and the output scale.
__device__ __forceinline__ float block_scale(float amax, float gs, uint8_t& sf_byte) {
  float sf = gs * (amax * rcp_approx_ftz(6.0f));
  const __nv_fp8_e4m3 sf8(sf);  // cvt.rn.satfinite.e4m3: sf >= 0 or NaN here
  sf_byte = sf8.__x;
  sf = static_cast<float>(sf8);
  return sf != 0.0f ? rcp_approx_ftz(sf * rcp_approx_ftz(gs)) : 0.0f;
}

// Scale 8 elements (4 pairs) and convert them: element i in nibble i.
template <typename T, int CONV>
__device__ __forceinline__ uint32_t scale_convert8(const typename Vec2<T>::type* e,
                                                   float out_scale) {
  float v[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = Vec2<T>::to_float2(e[j]);
    v[2 * j] = f.x * out_scale;
    v[2 * j + 1] = f.y * out_scale;
  }
  return convert8<CONV>(v);
}

// One 16-element block held by one thread: packed codes and the scale byte.
template <typename T, int CONV>
__device__ __forceinline__ uint2 quant_block(const uint4 (&raw)[2], float gs, uint8_t& sf_byte) {
  using T2 = typename Vec2<T>::type;
  const T2* e = reinterpret_cast<const T2*>(raw);
  T2 m2 = __habs2(e[0]);
#pragma unroll
  for (int j = 1; j < 8; ++j) m2 = __hmax2(m2, __habs2(e[j]));
  const float out_scale = block_scale(Vec2<T>::to_float(__hmax(m2.x, m2.y)), gs, sf_byte);
  return make_uint2(scale_convert8<T, CONV>(e, out_scale), scale_convert8<T, CONV>(e + 4, out_scale));
}

struct Outputs {
  uint2* out;
  uint8_t* sf_swizzled;
  uint8_t* sf_linear;
  int kb;
  int k_tiles;
};

__device__ __forceinline__ void store_block(const Outputs& o, int64_t idx, int row, int k,
                                            uint2 packed, uint8_t sf_byte) {
  o.out[idx] = packed;
  if (o.sf_swizzled) o.sf_swizzled[swizzled_offset(row, k, o.k_tiles)] = sf_byte;
  if (o.sf_linear) o.sf_linear[idx] = sf_byte;
}

// Layout 0: one thread per 16-element block, two 16-byte loads side by side (a warp's pair of
// loads covers 1 KiB with a 32-byte stride each). No shuffle; the scale is computed once.
template <typename T, int CONV>
__global__ void __launch_bounds__(256, TURBO_NVFP4_MIN_CTAS)
    quant_kernel_block(int rows, const uint4* __restrict__ in, const float* __restrict__ global_scale,
                       Outputs o) {
  const int64_t total = static_cast<int64_t>(rows) * o.kb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float gs = *global_scale;
  // Walk (row, block) incrementally: no 64-bit division per iteration.
  int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int row_step = static_cast<int>(stride / o.kb);
  const int col_step = static_cast<int>(stride % o.kb);
  int row = static_cast<int>(idx / o.kb);
  int k = static_cast<int>(idx % o.kb);
  for (; idx < total; idx += stride) {
    uint4 raw[2];
    raw[0] = __ldg(in + 2 * idx);
    raw[1] = __ldg(in + 2 * idx + 1);
    uint8_t sf_byte;
    const uint2 packed = quant_block<T, CONV>(raw, gs, sf_byte);
    store_block(o, idx, row, k, packed, sf_byte);
    row += row_step;
    k += col_step;
    if (k >= o.kb) {
      k -= o.kb;
      ++row;
    }
  }
}

// Layout 1: vLLM's own: 8 elements (16 bytes) per thread, fully coalesced loads, the two
// threads of a block exchange their amax with one shuffle and each converts its half.
template <typename T, int CONV>
__global__ void __launch_bounds__(256, TURBO_NVFP4_MIN_CTAS)
    quant_kernel_pair(int rows, const uint4* __restrict__ in, const float* __restrict__ global_scale,
                      Outputs o) {
  using T2 = typename Vec2<T>::type;
  const int halves = 2 * o.kb;
  const int64_t total = static_cast<int64_t>(rows) * halves;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float gs = *global_scale;
  uint32_t* out32 = reinterpret_cast<uint32_t*>(o.out);
  int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int row_step = static_cast<int>(stride / halves);
  const int col_step = static_cast<int>(stride % halves);
  int row = static_cast<int>(idx / halves);
  int col = static_cast<int>(idx % halves);
  // A trip count equal for every thread keeps both lanes of each pair in the shuffle.
  const int64_t trips = (total + stride - 1) / stride;
  for (int64_t it = 0; it < trips; ++it) {
    const bool active = idx < total;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (active) raw = __ldg(in + idx);
    const T2* e = reinterpret_cast<const T2*>(&raw);
    T2 m2 = __habs2(e[0]);
#pragma unroll
    for (int j = 1; j < 4; ++j) m2 = __hmax2(m2, __habs2(e[j]));
    m2 = __hmax2(__shfl_xor_sync(0xFFFFFFFFu, m2, 1), m2);
    uint8_t sf_byte;
    const float out_scale = block_scale(Vec2<T>::to_float(__hmax(m2.x, m2.y)), gs, sf_byte);
    const uint32_t packed = scale_convert8<T, CONV>(e, out_scale);
    if (active) {
      out32[idx] = packed;
      if ((col & 1) == 0) {
        const int k = col >> 1;
        if (o.sf_swizzled) o.sf_swizzled[swizzled_offset(row, k, o.k_tiles)] = sf_byte;
        if (o.sf_linear) o.sf_linear[static_cast<int64_t>(row) * o.kb + k] = sf_byte;
      }
    }
    idx += stride;
    row += row_step;
    col += col_step;
    if (col >= halves) {
      col -= halves;
      ++row;
    }
  }
}

// Layout 2 ("tile"): one thread per block on a 2-D grid, x across a row's blocks and y across
// rows, so no thread divides anything; CTAs are scheduled as others finish (no grid-stride
// loop over the whole tensor, only over rows beyond the 65535 grid rows).
template <typename T, int CONV>
__global__ void __launch_bounds__(256, TURBO_NVFP4_MIN_CTAS)
    quant_kernel_tile(int rows, const uint4* __restrict__ in, const float* __restrict__ global_scale,
                      Outputs o) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= o.kb) return;
  const float gs = *global_scale;
  for (int row = blockIdx.y * blockDim.y + threadIdx.y; row < rows;
       row += gridDim.y * blockDim.y) {
    const int64_t idx = static_cast<int64_t>(row) * o.kb + k;
    uint4 raw[2];
    raw[0] = __ldg(in + 2 * idx);
    raw[1] = __ldg(in + 2 * idx + 1);
    uint8_t sf_byte;
    const uint2 packed = quant_block<T, CONV>(raw, gs, sf_byte);
    store_block(o, idx, row, k, packed, sf_byte);
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

template <typename T, int CONV>
void launch_layout(int layout, int rows, const uint4* in, const float* gs, const Outputs& o,
                   int num_sms, cudaStream_t stream) {
  if (layout == TURBO_NVFP4_LAYOUT_TILE) {
    // x: the row's blocks, in whole warps; y: as many rows as fit in 256 threads.
    const int tx = o.kb >= 256 ? 256 : (o.kb + 31) / 32 * 32;
    const int ty = 256 / tx;
    const int gy = (rows + ty - 1) / ty;
    const dim3 grid((o.kb + tx - 1) / tx, gy < 65535 ? gy : 65535);
    quant_kernel_tile<T, CONV><<<grid, dim3(tx, ty), 0, stream>>>(rows, in, gs, o);
    return;
  }
  const int64_t blocks = static_cast<int64_t>(rows) * o.kb;
  const int64_t threads = layout == TURBO_NVFP4_LAYOUT_PAIR ? 2 * blocks : blocks;
  const int64_t want = (threads + 255) / 256;
  // Layout 3 ("flat") is layout 0 with one block per thread and no grid-stride loop; the
  // others fill the SMs once and loop.
  const int64_t cap = layout == TURBO_NVFP4_LAYOUT_FLAT
                          ? int64_t(0x7FFFFFFF)
                          : int64_t(num_sms) * TURBO_NVFP4_HOST_CTAS_PER_SM;
  const int grid = static_cast<int>(want < cap ? want : cap);
  if (layout == TURBO_NVFP4_LAYOUT_PAIR)
    quant_kernel_pair<T, CONV><<<grid, 256, 0, stream>>>(rows, in, gs, o);
  else
    quant_kernel_block<T, CONV><<<grid, 256, 0, stream>>>(rows, in, gs, o);
}

template <typename T>
cudaError_t launch_typed(int conv, int layout, int rows, const uint4* in, const float* gs,
                         const Outputs& o, int num_sms, cudaStream_t stream) {
  switch (conv) {
    case TURBO_NVFP4_CONV_TURBO:
      launch_layout<T, TURBO_NVFP4_CONV_TURBO>(layout, rows, in, gs, o, num_sms, stream);
      break;
    case TURBO_NVFP4_CONV_CHAIN:
      launch_layout<T, TURBO_NVFP4_CONV_CHAIN>(layout, rows, in, gs, o, num_sms, stream);
      break;
    case TURBO_NVFP4_CONV_CUDA:
      launch_layout<T, TURBO_NVFP4_CONV_CUDA>(layout, rows, in, gs, o, num_sms, stream);
      break;
    case TURBO_NVFP4_CONV_NONE:
      launch_layout<T, TURBO_NVFP4_CONV_NONE>(layout, rows, in, gs, o, num_sms, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t turbo_nvfp4_quant(int dtype, int conv, int layout, int rows, int cols,
                              const void* in, const float* global_scale, void* out,
                              uint8_t* sf_swizzled, uint8_t* sf_linear, int num_sms,
                              cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || cols % 16 != 0) return cudaErrorInvalidValue;
  if (layout < 0 || layout > TURBO_NVFP4_LAYOUT_FLAT) return cudaErrorInvalidValue;
  const int kb = cols / 16;
  const Outputs o{static_cast<uint2*>(out), sf_swizzled, sf_linear, kb, (kb + 3) / 4};
  if (sf_swizzled && ((rows % 128) != 0 || (kb % 4) != 0)) {
    zero_padding_kernel<<<num_sms, 256, 0, stream>>>(rows, cols, sf_swizzled);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const uint4* vin = static_cast<const uint4*>(in);
  if (dtype == TURBO_NVFP4_DTYPE_F16)
    return launch_typed<__half>(conv, layout, rows, vin, global_scale, o, num_sms, stream);
  if (dtype == TURBO_NVFP4_DTYPE_BF16)
    return launch_typed<__nv_bfloat16>(conv, layout, rows, vin, global_scale, o, num_sms, stream);
  return cudaErrorInvalidValue;
}

cudaError_t turbo_rcp_approx(const float* in, float* out, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = (n + 255) / 256;
  rcp_approx_kernel<<<static_cast<int>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(in, out,
                                                                                       n);
  return cudaGetLastError();
}
