// CUDA backend of the tensorized LSTM ops: the launches of the three row passes of a step
// (tensorized_lstm.h), plugged into the shared driver, which runs the input projection and the
// weight gradients as cuBLAS GEMMs through ATen on the current stream; the step GEMMs call
// cuBLAS directly (cublas_gemm.cuh), as a step's other launches take a few microseconds of
// host time each. For small B*P the whole recurrence runs instead as one persistent kernel per
// direction; this file chooses between the two.
//
// The device code lives in headers by job: tensorized_rows.cuh (the rows, the gather),
// tensorized_persistent.cuh (the persistent kernels); both run the row math of
// ../tensorized_lstm_row.h, which the CPU kernels run too. Inputs may be float32, float64,
// float16 or bfloat16; statistics, cells and accumulations are in the op-math type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "../matmul.h"
#include "../tensorized_lstm.h"
#include "cublas_gemm.cuh"
#include "persistent_launch.cuh"
#include "tensorized_persistent.cuh"
#include "tensorized_rows.cuh"

namespace tlstm {
namespace {

// Blocks of the step kernels' grid-stride loops, at most 16 per SM: a warp per row over `rows`.
unsigned int row_blocks(int64_t rows) { return blocks_for(rows, kWarpsPerBlock, 16); }

template <class Fn>
void dispatch_dtype(at::ScalarType dtype, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "tlstm_tensorized_cuda",
                                  [&] { fn(scalar_t{}); });
}

void forward_rows_cuda(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto& n = buf.n;
  const int64_t rows = n.B * n.N;
  if (rows == 0) return;
  dispatch_dtype(buf.pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = forward_sequence<scalar_t>(buf).rows(s);
    dispatch_flags(n.channel_norm, n.memory_conv, [&](auto norm, auto memory_conv) {
      tensorized_forward_rows_kernel<scalar_t, acc_t, decltype(norm)::value,
                                     decltype(memory_conv)::value>
          <<<row_blocks(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void backward_rows_cuda(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t rows = n.B * n.N;
  if (rows == 0) return;
  dispatch_dtype(buf.grad_pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).rows(s, cur);
    dispatch_flags(n.channel_norm, n.memory_conv, [&](auto norm, auto memory_conv) {
      tensorized_backward_rows_kernel<scalar_t, acc_t, decltype(norm)::value,
                                      decltype(memory_conv)::value>
          <<<row_blocks(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void gather_rows_cuda(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t rows = n.N * n.B;
  if (rows == 0 || n.M == 0) return;
  dispatch_dtype(buf.grad_pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).gather(s, cur);
    dispatch_flag(n.memory_conv, [&](auto memory_conv) {
      tensorized_gather_kernel<scalar_t, acc_t, decltype(memory_conv)::value>
          <<<row_blocks(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// The persistent kernels are chosen by default while a step is small on both counts below; an
// estimate, until the crossover is measured (benchmarks/gpu_session.sh crossover-tensorized),
// against the 41-48 us a step of the step kernels measured on an H100 at B=16, M=256, most of
// it host time. TLSTM_CUDA_RECURRENCE forces a choice.
// - Bytes: every block stages the step's X_col (B*P x K'*M elements) each step. At 1 MiB (B=16
//   at depth 8 for M=512 in float32, at depth 16 for M=256) the ~130 blocks of an H100 read
//   ~130 MB from L2 a step, ~15 us.
// - Multiply-adds: the blocks' products (B*P x K'*M x G a step) run on the CUDA cores in the
//   op-math type, never on tensor cores: 2^29 of them are 1.07 GFLOP, ~32 us at half the
//   H100's 67 TFLOP/s of float32. Past that the steps win once their GEMM is GPU work, and in
//   float16 and bfloat16 sooner, as cuBLAS runs theirs on tensor cores. In float32 this bound
//   is the bytes' at M=512 and looser below; in the half types, whose X_col takes half the
//   bytes, it is the one that binds at M=512 (B=16 at depth 16 runs the steps).
constexpr int64_t kPersistentMaxStagedBytes = int64_t(1) << 20;
constexpr int64_t kPersistentMaxMultiplyAdds = int64_t(1) << 29;

// Calls fn(scalar, norm, memory_conv) and returns what it returns, where the persistent kernels
// are wanted for this call; false otherwise (the driver then runs the steps).
template <class Fn>
bool dispatch_persistent(const TensorizedSizes& n, at::ScalarType dtype, const Fn& fn) {
  if (n.B == 0 || n.S == 0 || n.axes != 1) return false;  // (the 3-D cell: the steps)
  bool ran = false;
  dispatch_dtype(dtype, [&](auto scalar) {
    const int64_t x_col = n.B * n.P * n.taps * n.M;  // elements, and the GEMM's rows x depth
    if (!persistent_wanted(x_col * int64_t(sizeof(scalar)) <= kPersistentMaxStagedBytes &&
                           x_col * n.G <= kPersistentMaxMultiplyAdds)) {
      return;
    }
    dispatch_flags(n.channel_norm, n.memory_conv,
                   [&](auto norm, auto memory_conv) { ran = fn(scalar, norm, memory_conv); });
  });
  return ran;
}

bool forward_sequence_cuda(const TensorizedForwardBuffers& buf, const Tensor& weight_col) {
  const auto& n = buf.n;
  const Tensor weight = weight_col.contiguous();  // [K'*M, G]
  Tensor x_col;  // [P, B, K', M] scratch, alive until the launch is queued
  return dispatch_persistent(n, buf.pre.scalar_type(), [&](auto scalar, auto norm, auto conv) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    return launch_persistent(  // blocks split the G columns of A, summing over K'*M
        tensorized_forward_persistent_kernel<scalar_t, acc_t, decltype(norm)::value,
                                             decltype(conv)::value>,
        n.G, kTile,
        [&](int64_t w) {
          return block_matmul_shape<scalar_t, acc_t>(n.B * n.P, w, n.taps * n.M, 0);
        },
        [&](int64_t units, const BlockMatmulShape& shape) {
          x_col = at::empty({n.P, n.B, n.taps, n.M}, buf.pre.options());
          return TensorizedPersistentForwardParams<scalar_t, acc_t>{
              forward_sequence<scalar_t>(buf), x_col.data_ptr<scalar_t>(),
              weight.data_ptr<scalar_t>(), units, shape};
        });
  });
}

bool backward_sequence_cuda(const TensorizedBackwardBuffers& buf, const Tensor& weight_col) {
  const auto& n = buf.n;
  const Tensor weight = weight_col.contiguous();  // [K'*M, G]
  Tensor grad_cconv, grad_col;  // alive until the launch is queued
  return dispatch_persistent(n, buf.grad_pre.scalar_type(), [&](auto scalar, auto norm, auto conv) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    return launch_persistent(  // blocks split the K'*M columns of X_col, summing over G
        tensorized_backward_persistent_kernel<scalar_t, acc_t, decltype(norm)::value,
                                              decltype(conv)::value>,
        n.taps * n.M, kTile,
        [&](int64_t w) { return block_matmul_shape<scalar_t, acc_t>(n.B * n.P, w, n.G, 0); },
        [&](int64_t units, const BlockMatmulShape& shape) {
          // dL/dCconv by the step's parity: the gather of step s+1 reads it beside the rows of s
          grad_cconv = at::empty({2, n.P, n.B, n.M}, buf.grad_cconv.options());
          grad_col = at::empty({n.P, n.B, n.taps, n.M}, buf.grad_pre.options());
          return TensorizedPersistentBackwardParams<scalar_t, acc_t>{
              backward_sequence<scalar_t>(buf, grad_cconv, grad_col), weight.data_ptr<scalar_t>(),
              units, shape};
        });
  });
}

// The step GEMMs' weight [K'*M, G] (forward) or [G, K'*M] (backward), multiplied with cuBLAS
// directly: at::mm_out's dispatch costs more host time than the rest of a step.
struct CublasRightOperand : RepeatedRightOperand {
  explicit CublasRightOperand(at::Tensor b) : b_(b.contiguous()) {}
  // out [m, N] (+)= a [m, K] b, a and out contiguous
  void matmul_out(at::Tensor& out, const at::Tensor& a, bool accumulate) const override {
    TORCH_INTERNAL_ASSERT(a.is_contiguous() && out.is_contiguous() && a.dim() == 2 &&
                          out.dim() == 2 && a.size(1) == b_.size(0) &&
                          out.size(0) == a.size(0) && out.size(1) == b_.size(1) &&
                          a.scalar_type() == b_.scalar_type() &&
                          out.scalar_type() == b_.scalar_type());
    dispatch_dtype(b_.scalar_type(), [&](auto scalar) {
      using scalar_t = decltype(scalar);
      gemm_row_major<scalar_t>(a.size(0), b_.size(1), a.size(1), a.data_ptr<scalar_t>(),
                               b_.data_ptr<scalar_t>(), accumulate ? 1.0 : 0.0,
                               out.data_ptr<scalar_t>());
    });
  }
  at::Tensor b_;
};

std::unique_ptr<RepeatedRightOperand> prepare_right_operand_cuda(const at::Tensor& b) {
  return std::make_unique<CublasRightOperand>(b);
}

struct CudaBackend {
  static constexpr TensorizedStepKernels kernels{
      .prepare_right_operand = prepare_right_operand_cuda,
      .forward_rows = forward_rows_cuda,
      .backward_rows = backward_rows_cuda,
      .gather_rows = gather_rows_cuda,
      .forward_sequence = forward_sequence_cuda,
      .backward_sequence = backward_sequence_cuda,
  };
  static void check_input(const char* op, const Tensor& input, int64_t kernel_size,
                          int64_t memory_taps) {
    check_floating(op, input, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}, "CUDA");
    TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device, got ", input.device());
    TORCH_CHECK(memory_taps <= kMaxMemoryTaps, op, " on CUDA supports up to ", kMaxMemoryTaps,
                " memory taps (kernel_size up to 25, or 5 with tensor_dim=3), got kernel_size ",
                kernel_size, " (", memory_taps, " taps)");
  }
  using Guard = c10::cuda::CUDAGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CUDA, m) {
  m.impl("tensorized_lstm_forward", &tensorized_lstm_forward_op<CudaBackend>);
  m.impl("tensorized_lstm_backward", &tensorized_lstm_backward_op<CudaBackend>);
}

}  // namespace tlstm
