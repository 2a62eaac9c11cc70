// torch binding of kernels/nvfp4_quant.cu, built on demand by turbo/kernels.py
// (torch.utils.cpp_extension.load). Shapes and dtypes are checked here; the Python wrapper
// turns TORCH_CHECK failures for bad user input into one-line errors before they get here.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <optional>

#include "nvfp4_quant.h"

namespace {

uint8_t* bytes_or_null(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<uint8_t>() : nullptr;
}

void quantize(const torch::Tensor& input, const torch::Tensor& global_scale, const torch::Tensor& out,
              const std::optional<torch::Tensor>& sf_swizzled,
              const std::optional<torch::Tensor>& sf_linear, int64_t conv, int64_t layout) {
  TORCH_CHECK(input.is_cuda() && input.dim() == 2 && input.is_contiguous(),
              "input must be a contiguous 2-D CUDA tensor");
  TORCH_CHECK(input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16,
              "input must be float16 or bfloat16");
  const int64_t rows = input.size(0), cols = input.size(1);
  TORCH_CHECK(cols % 16 == 0, "columns must be a multiple of 16");
  TORCH_CHECK(rows < (int64_t(1) << 31) && cols < (int64_t(1) << 31), "tensor too large");
  TORCH_CHECK(global_scale.is_cuda() && global_scale.scalar_type() == at::kFloat &&
                  global_scale.numel() == 1,
              "global_scale must be one float32 on the GPU");
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kByte && out.is_contiguous() &&
                  out.numel() == rows * cols / 2,
              "out must be a contiguous uint8 tensor of rows * cols / 2 bytes");
  const int64_t kb = cols / 16;
  if (sf_swizzled.has_value()) {
    const auto& s = *sf_swizzled;
    TORCH_CHECK(s.is_cuda() && s.scalar_type() == at::kByte && s.is_contiguous() &&
                    s.numel() == ((rows + 127) / 128 * 128) * ((kb + 3) / 4 * 4),
                "sf_swizzled must be uint8 of round_up(rows,128) * round_up(cols/16,4) bytes");
  }
  if (sf_linear.has_value()) {
    const auto& s = *sf_linear;
    TORCH_CHECK(s.is_cuda() && s.scalar_type() == at::kByte && s.is_contiguous() &&
                    s.numel() == rows * kb,
                "sf_linear must be uint8 of rows * cols/16 bytes");
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const int dtype =
      input.scalar_type() == at::kHalf ? TURBO_NVFP4_DTYPE_F16 : TURBO_NVFP4_DTYPE_BF16;
  int sms = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                     input.get_device()) == cudaSuccess,
              "cannot read the multiprocessor count");
  const cudaError_t err = turbo_nvfp4_quant(
      dtype, static_cast<int>(conv), static_cast<int>(layout), static_cast<int>(rows), static_cast<int>(cols),
      input.data_ptr(), global_scale.data_ptr<float>(), out.data_ptr(), bytes_or_null(sf_swizzled),
      bytes_or_null(sf_linear), sms, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "turbo_nvfp4_quant: ", cudaGetErrorString(err));
}

torch::Tensor rcp_approx(const torch::Tensor& x) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat, "x must be float32 on the GPU");
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = torch::empty_like(xc);
  const cudaError_t err = turbo_rcp_approx(xc.data_ptr<float>(), out.data_ptr<float>(),
                                           xc.numel(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "turbo_rcp_approx: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize", &quantize, "NVFP4 quantisation into preallocated outputs");
  m.def("rcp_approx", &rcp_approx, "rcp.approx.ftz.f32 elementwise (test reference)");
}
