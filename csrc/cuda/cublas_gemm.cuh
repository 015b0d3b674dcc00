// Row-major GEMMs of the recurrent steps, with cuBLAS called directly on the current stream.
#pragma once

#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace tlstm {

template <typename scalar_t>
constexpr cudaDataType_t cublas_data_type() {
  return std::is_same<scalar_t, double>::value       ? CUDA_R_64F
         : std::is_same<scalar_t, float>::value      ? CUDA_R_32F
         : std::is_same<scalar_t, at::Half>::value   ? CUDA_R_16F
                                                     : CUDA_R_16BF;
}

// Row-major out[m, n] = a[m, k] b[k, n] + beta * out, all contiguous, with cuBLAS on the current
// stream (ATen's handle is bound to it). The step GEMMs are small and there are T of them in a
// row: a direct cublasGemmEx costs a few microseconds of host time where at::mm_out /
// addmm_out (dispatcher, checks, views) cost several times that, most of a step at small
// sizes. float32 honours torch.backends.cuda.matmul.allow_tf32 as ATen does; half types
// accumulate in float32.
template <typename scalar_t>
void gemm_row_major(int64_t m, int64_t n, int64_t k, const scalar_t* a, const scalar_t* b,
                    double beta, scalar_t* out) {
  if (m == 0 || n == 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(m <= kMax && n <= kMax && k <= kMax,
              "tlstm: a step GEMM of [", m, ", ", k, "] x [", k, ", ", n,
              "] exceeds cuBLAS's 32-bit sizes");
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t alpha_value = 1, beta_value = static_cast<acc_t>(beta);
  const cublasComputeType_t compute =
      std::is_same<scalar_t, double>::value ? CUBLAS_COMPUTE_64F
      : (std::is_same<scalar_t, float>::value && at::globalContext().allowTF32CuBLAS())
          ? CUBLAS_COMPUTE_32F_FAST_TF32
          : CUBLAS_COMPUTE_32F;
  constexpr cudaDataType_t type = cublas_data_type<scalar_t>();
  // column-major: out^T [n, m] = b^T [n, k] a^T [k, m]
  TORCH_CUDABLAS_CHECK(cublasGemmEx(at::cuda::getCurrentCUDABlasHandle(), CUBLAS_OP_N,
                                    CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                    static_cast<int>(k), &alpha_value, b, type,
                                    static_cast<int>(n), a, type,
                                    static_cast<int>(std::max<int64_t>(k, 1)),
                                    &beta_value, out, type, static_cast<int>(n), compute,
                                    CUBLAS_GEMM_DEFAULT));
}

}  // namespace tlstm
