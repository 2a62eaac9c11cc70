// vLLM's own fast reciprocal (vllm::reciprocal_approximate_ftz in nvfp4_utils.cuh, the
// rcp.approx.ftz.f32 instruction) as a torch op. The NVFP4 kernel computes its output scale with
// it; the test feeds it to vLLM's Python reference so that "data given the kernel's scales" can
// be compared bit for bit (Python's 1/x is correctly rounded, rcp.approx is not).
#include <torch/all.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "nvfp4_utils.cuh"

namespace {

__global__ void rcp_kernel(float const* __restrict__ x, float* __restrict__ y, int64_t n) {
  int64_t const i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = vllm::reciprocal_approximate_ftz(x[i]);
}

}  // namespace

torch::Tensor vllm_reciprocal_approximate_ftz(torch::Tensor const& x) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::ScalarType::Float,
              "expected a float32 CUDA tensor");
  auto const in = x.contiguous();
  auto out = torch::empty_like(in);
  int64_t const n = in.numel();
  if (n == 0) return out;
  const at::cuda::OptionalCUDAGuard guard(device_of(in));
  int const threads = 256;
  auto const blocks = static_cast<unsigned>((n + threads - 1) / threads);
  rcp_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      in.data_ptr<float>(), out.data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
