// Python binding for vLLM's OWN NVFP4 quantisation entry point, built from the vLLM sdist
// (tests/kernels/vllm_nvfp4.py compiles it together with vLLM's csrc/quantization/fp4/
// nvfp4_quant_entry.cu, nvfp4_quant_kernels.cu and csrc/cuda_utils_kernels.cu).
//
// vLLM registers scaled_fp4_quant with TORCH_LIBRARY in csrc/torch_bindings.cpp, which pulls in
// every other kernel of the project; this file exposes the same function, with the signature of
// vLLM's csrc/ops.h, and nothing else of ours touches the arithmetic.
#include <torch/extension.h>

// vLLM's declaration (csrc/ops.h); defined in nvfp4_quant_entry.cu.
void scaled_fp4_quant(torch::Tensor& output, torch::Tensor const& input,
                      torch::Tensor& output_sf, torch::Tensor const& input_sf,
                      bool is_sf_swizzled_layout);

// vllm::reciprocal_approximate_ftz (nvfp4_utils.cuh) applied elementwise; vllm_nvfp4_rcp.cu.
torch::Tensor vllm_reciprocal_approximate_ftz(torch::Tensor const& x);

// nvfp4_quant_entry.cu also dispatches the MoE-experts and SiLU-fused quantisers, defined in
// other vLLM files (nvfp4_experts_quant.cu, activation_nvfp4_quant_fusion_kernels.cu) that this
// extension does not build: they are not under test. These definitions only satisfy the linker
// and refuse to run; scaled_fp4_quant never reaches them.
void scaled_fp4_experts_quant_sm1xxa(torch::Tensor&, torch::Tensor&, torch::Tensor const&,
                                     torch::Tensor const&, torch::Tensor const&,
                                     torch::Tensor const&) {
  TORCH_CHECK(false, "scaled_fp4_experts_quant is not built in this test extension");
}

void silu_and_mul_nvfp4_quant_sm1xxa(torch::Tensor&, torch::Tensor&, torch::Tensor&,
                                     torch::Tensor&) {
  TORCH_CHECK(false, "silu_and_mul_nvfp4_quant is not built in this test extension");
}

void silu_and_mul_scaled_fp4_experts_quant_sm1xxa(torch::Tensor&, torch::Tensor&,
                                                  torch::Tensor const&, torch::Tensor const&,
                                                  torch::Tensor const&, torch::Tensor const&) {
  TORCH_CHECK(false, "silu_and_mul_scaled_fp4_experts_quant is not built in this test extension");
}

namespace {

// Tensors are handles: taking them by value and passing references on keeps vLLM's in-place
// contract (the caller allocates output and output_sf, as vllm/_custom_ops.py does).
void scaled_fp4_quant_py(torch::Tensor output, torch::Tensor input, torch::Tensor output_sf,
                         torch::Tensor input_sf, bool is_sf_swizzled_layout) {
  scaled_fp4_quant(output, input, output_sf, input_sf, is_sf_swizzled_layout);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scaled_fp4_quant", &scaled_fp4_quant_py,
        "vLLM's scaled_fp4_quant(output, input, output_sf, input_sf, is_sf_swizzled_layout)");
  m.def("reciprocal_approximate_ftz", &vllm_reciprocal_approximate_ftz,
        "vLLM's reciprocal_approximate_ftz (rcp.approx.ftz.f32) on a float32 CUDA tensor");
}
