// C++ interface of kernels/nvfp4_quant.cu (no torch: the binding lives in nvfp4_quant_ext.cpp).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#define TURBO_NVFP4_DTYPE_F16 0
#define TURBO_NVFP4_DTYPE_BF16 1

// Conversion variants (the benchmark compares them; only TURBO is for real use).
#define TURBO_NVFP4_CONV_TURBO 0  // turbo_e2m1x8: hardware where the target has it, else software
#define TURBO_NVFP4_CONV_CHAIN 1  // the seed's comparison chain
#define TURBO_NVFP4_CONV_CUDA 2   // CUDA's __nv_cvt_float2_to_fp4x2
#define TURBO_NVFP4_CONV_NONE 3   // no conversion: the ceiling

// Thread layouts (the benchmark compares them; kernels/nvfp4_quant.cu explains each).
#define TURBO_NVFP4_LAYOUT_BLOCK 0  // one thread per 16-element block, grid-stride loop
#define TURBO_NVFP4_LAYOUT_PAIR 1   // vLLM's: 8 elements per thread, amax shuffle, grid-stride
#define TURBO_NVFP4_LAYOUT_TILE 2   // one thread per block, 2-D grid, no division (default)
#define TURBO_NVFP4_LAYOUT_FLAT 3   // one thread per block, 1-D grid without a loop

// in: [rows, cols] fp16/bf16, row-major, 16-byte aligned, cols % 16 == 0.
// out: [rows, cols / 2] bytes; sf_swizzled: [round_up(rows, 128), round_up(cols / 16, 4)] bytes
// or null; sf_linear: [rows, cols / 16] bytes or null. global_scale: one float on the device.
cudaError_t turbo_nvfp4_quant(int dtype, int conv, int layout, int rows, int cols,
                              const void* in, const float* global_scale, void* out,
                              uint8_t* sf_swizzled, uint8_t* sf_linear, int num_sms,
                              cudaStream_t stream);

// rcp.approx.ftz.f32 elementwise: the one non-IEEE step of vLLM's algorithm, exposed so that the
// tests' reference can use the very same instruction.
cudaError_t turbo_rcp_approx(const float* in, float* out, int64_t n, cudaStream_t stream);
