// Compile driver for vLLM's csrc/quantization/fp4/nvfp4_utils.cuh (tests/test_nvfp4_compile.py).
//
// nvfp4_utils.cuh is torch-free except that it names at::Half and at::BFloat16 in two
// CUDATypeConverter specialisations; vLLM's .cu files include torch first. Declaring the two
// types here (incomplete types suffice for an explicit specialisation) lets nvcc compile the
// header without torch. Nothing else is stubbed: every function below is vLLM's own.
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace at {
struct Half;
struct BFloat16;
}  // namespace at

#include "nvfp4_utils.cuh"

// Each kernel instantiates one of the header's conversion entry points, so each reaches PTX.
__global__ void vec8_array(const float* in, uint32_t* out) {
  float v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = in[threadIdx.x * 8 + i];
  out[threadIdx.x] = vllm::fp32_vec8_to_e2m1(v);
}

__global__ void vec8_float2(const float2* in, uint32_t* out) {
  float2 v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = in[threadIdx.x * 4 + i];
  out[threadIdx.x] = vllm::fp32_vec8_to_e2m1(v);
}

__global__ void vec16_float2(const float2* in, vllm::u32x2* out) {
  float2 v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = in[threadIdx.x * 8 + i];
  out[threadIdx.x] = vllm::fp32_vec16_to_e2m1(v);
}

template <class T>
__global__ void quant_block(vllm::PackedVec<T>* in, float sf_scale, uint8_t* sf_out,
                            vllm::fp4_packed_t* out) {
  out[threadIdx.x] =
      vllm::cvt_warp_fp16_to_fp4<T, 2>(in[threadIdx.x], sf_scale, sf_out + threadIdx.x);
}

template __global__ void quant_block<half>(vllm::PackedVec<half>*, float, uint8_t*,
                                           vllm::fp4_packed_t*);
template __global__ void quant_block<__nv_bfloat16>(vllm::PackedVec<__nv_bfloat16>*, float,
                                                    uint8_t*, vllm::fp4_packed_t*);
