// Exhaustive device check of kernels/e2m1.cuh (and the DGX Spark probe).
//
// Every one of the 2^32 fp32 bit patterns goes through, on the GPU:
//   * the software conversion (copied back and compared with the host build of the same header,
//     computed on all host cores);
//   * CUDA's own __nv_cvt_float_to_fp4 (its double-precision emulation on targets without the
//     instruction, the instruction itself on a/f targets), compared on non-NaN inputs, with a
//     histogram of what it returns for NaN;
//   * when the compile target has it, the hardware `cvt.rn.satfinite.e2m1x2.f32`, compared with
//     the software path on non-NaN inputs, with a histogram of what it returns for NaN, and the
//     public API (turbo_e2m1x2 / turbo_e2m1x8) checked against the scalar codes.
// Prints one JSON object on stdout. Exit status: 0 all agree, 1 a mismatch, 2 a CUDA error.
//
// Build: nvcc -O3 -std=c++17 -gencode arch=compute_XX,code=sm_XX e2m1_device_check.cu
//        (sm_121a on a DGX Spark runs the hardware instruction; plain targets run software).

#include <cuda_fp4.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "e2m1.cuh"

namespace {

struct Counters {
  unsigned long long cuda_bad;      // non-NaN inputs where CUDA's conversion != software
  unsigned long long hw_bad;        // non-NaN inputs where the instruction != software
  unsigned long long api_bad;       // packing checks of the public API that failed
  unsigned long long cuda_nan[16];  // CUDA's code for NaN inputs
  unsigned long long hw_nan[16];    // the instruction's code for NaN inputs
  unsigned int cuda_first;          // first pattern of each kind of mismatch
  unsigned int hw_first;
  unsigned int api_first;
  int hw_compiled;
};

__device__ __forceinline__ bool is_nan_bits(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

__global__ void check_kernel(uint32_t base, uint32_t count, uint8_t* sw_out, Counters* c) {
  if (blockIdx.x == 0 && threadIdx.x == 0) c->hw_compiled = TURBO_E2M1_TARGET_HAS_CVT;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    const uint32_t u = base + i;
    const float x = __uint_as_float(u);
    const bool nan = is_nan_bits(u);
    const uint32_t sw = turbo_e2m1_sw(x);
    sw_out[i] = static_cast<uint8_t>(sw);

    const uint32_t cu = __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest) & 0xFu;
    if (nan) {
      atomicAdd(&c->cuda_nan[cu], 1ull);
    } else if (cu != sw) {
      atomicAdd(&c->cuda_bad, 1ull);
      atomicMin(&c->cuda_first, u);
    }

    // The public API on this target (hardware when compiled for it): the pair and the eight
    // must put each code in its documented nibble. y is a different input for every x.
    const float y = __uint_as_float(u * 2654435761u);
    const uint32_t sy = turbo_e2m1_sw(y);
    const uint32_t pair = turbo_e2m1x2(x, y);
    const uint32_t eight = turbo_e2m1x8(x, y, 0.0f, -0.0f, y, x, 6.0f, -7.0f);
    const uint32_t want8 = sw | sy << 4 | 0u << 8 | 8u << 12 | sy << 16 | sw << 20 |
                           7u << 24 | 0xFu << 28;
    const bool api_ok = nan || is_nan_bits(__float_as_uint(y)) ||
                        (pair == (sw << 4 | sy) && eight == want8 &&
                         turbo_e2m1_from_float(x) == sw);
    if (!api_ok) {
      atomicAdd(&c->api_bad, 1ull);
      atomicMin(&c->api_first, u);
    }
#if TURBO_E2M1_TARGET_HAS_CVT
    const uint32_t hw = turbo_e2m1x2_hw(0.0f, x) & 0xFu;
    if (nan) {
      atomicAdd(&c->hw_nan[hw], 1ull);
    } else if (hw != sw) {
      atomicAdd(&c->hw_bad, 1ull);
      atomicMin(&c->hw_first, u);
    }
#endif
  }
}

bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::printf("{\"error\": \"%s: %s\"}\n", what, cudaGetErrorString(e));
  return false;
}

void print_hist(const char* name, const unsigned long long* h) {
  std::printf("\"%s\": {", name);
  bool first = true;
  for (int k = 0; k < 16; ++k) {
    if (!h[k]) continue;
    std::printf("%s\"0x%x\": %llu", first ? "" : ", ", k, h[k]);
    first = false;
  }
  std::printf("}");
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  constexpr uint32_t kChunk = 1u << 28;
  cudaDeviceProp prop{};
  if (!ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 2;

  uint8_t* d_sw = nullptr;
  Counters* d_c = nullptr;
  if (!ok(cudaMalloc(&d_sw, kChunk), "cudaMalloc") || !ok(cudaMalloc(&d_c, sizeof(Counters)), "cudaMalloc"))
    return 2;
  Counters init{};
  init.cuda_first = init.hw_first = init.api_first = 0xFFFFFFFFu;
  if (!ok(cudaMemcpy(d_c, &init, sizeof init, cudaMemcpyHostToDevice), "cudaMemcpy")) return 2;

  std::vector<uint8_t> h_sw(kChunk);
  const unsigned nthreads = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<unsigned long long> host_bad{0};
  std::atomic<unsigned int> host_first{0xFFFFFFFFu};

  for (uint64_t base = 0; base < (1ull << 32); base += kChunk) {
    check_kernel<<<prop.multiProcessorCount * 8, 256>>>(static_cast<uint32_t>(base), kChunk, d_sw, d_c);
    if (!ok(cudaGetLastError(), "launch") ||
        !ok(cudaMemcpy(h_sw.data(), d_sw, kChunk, cudaMemcpyDeviceToHost), "cudaMemcpy"))
      return 2;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < nthreads; ++t) {
      pool.emplace_back([&, t] {
        const uint32_t lo = static_cast<uint32_t>(uint64_t(kChunk) * t / nthreads);
        const uint32_t hi = static_cast<uint32_t>(uint64_t(kChunk) * (t + 1) / nthreads);
        unsigned long long bad = 0;
        for (uint32_t i = lo; i < hi; ++i) {
          const uint32_t u = static_cast<uint32_t>(base) + i;
          if (turbo_e2m1_from_float(turbo_e2m1_u2f(u)) != h_sw[i]) {
            if (!bad) {
              unsigned int prev = host_first.load();
              while (u < prev && !host_first.compare_exchange_weak(prev, u)) {
              }
            }
            ++bad;
          }
        }
        host_bad += bad;
      });
    }
    for (auto& th : pool) th.join();
  }
  Counters c{};
  if (!ok(cudaMemcpy(&c, d_c, sizeof c, cudaMemcpyDeviceToHost), "cudaMemcpy")) return 2;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("{\"device\": \"%s\", \"cc\": \"%d.%d\", \"inputs\": 4294967296, ", prop.name,
              prop.major, prop.minor);
  std::printf("\"host_threads\": %u, \"seconds\": %.2f, ", nthreads, secs);
  std::printf("\"device_sw_vs_host_mismatches\": %llu, \"device_sw_vs_host_first\": %u, ",
              host_bad.load(), host_first.load());
  std::printf("\"cuda_vs_sw_nonnan_mismatches\": %llu, \"cuda_vs_sw_first\": %u, ", c.cuda_bad,
              c.cuda_first);
  print_hist("cuda_nan_codes", c.cuda_nan);
  std::printf(", \"api_mismatches\": %llu, \"api_first\": %u, ", c.api_bad, c.api_first);
  std::printf("\"hw_compiled\": %s", c.hw_compiled ? "true" : "false");
  if (c.hw_compiled) {
    std::printf(", \"hw_vs_sw_nonnan_mismatches\": %llu, \"hw_vs_sw_first\": %u, ", c.hw_bad,
                c.hw_first);
    print_hist("hw_nan_codes", c.hw_nan);
  }
  std::printf("}\n");
  const bool agree = host_bad.load() == 0 && c.cuda_bad == 0 && c.api_bad == 0 && c.hw_bad == 0;
  return agree ? 0 : 1;
}
