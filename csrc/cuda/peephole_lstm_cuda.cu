// CUDA backend of the peephole LSTM ops, plugged into the shared sequence driver
// (peephole_lstm.cpp), which runs the input projection and the weight gradients as cuBLAS
// GEMMs through ATen on the current stream.
//
// A step is the recurrent GEMM (cuBLAS called directly, cublas_gemm.cuh) and one fused
// element-wise kernel (peephole_steps.cuh) built from the same cell math as the CPU
// (peephole_lstm_cell.h); for small batches the whole recurrence runs instead as one persistent
// kernel (peephole_persistent.cuh). This file holds the launches and the choice between the
// two. Inputs may be float32, float64, float16 or bfloat16; the cell state and all
// element-wise arithmetic are in the op-math type (float32 for the half types). Every index is
// 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "../peephole_lstm.h"
#include "cublas_gemm.cuh"
#include "peephole_persistent.cuh"
#include "peephole_steps.cuh"
#include "persistent_launch.cuh"

namespace tlstm {
namespace {

// Blocks of the step kernels' grid-stride loops over n elements: at most 8 per SM.
unsigned int element_blocks(int64_t n) { return blocks_for(n, kThreads, 8); }

// ---- steps -------------------------------------------------------------------------------

template <typename scalar_t, class Act, bool kProjected>
void launch_forward_step(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.hidden_states.size(2);
  const int64_t n = B * H;
  if (n == 0) return;
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;
  scalar_t* hidden_prev = buf.hidden_states.data_ptr<scalar_t>() + step.prev * B * R;
  scalar_t* hidden_next = buf.hidden_states.data_ptr<scalar_t>() + step.next * B * R;
  peephole_forward_step_kernel<scalar_t, acc_t, Act, kProjected>
      <<<element_blocks(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          buf.gates.data_ptr<scalar_t>() + step.gate * B * 4 * H, buf.bias.data_ptr<scalar_t>(),
          buf.peephole.data_ptr<scalar_t>(),
          buf.cell_states.data_ptr<acc_t>() + step.prev * B * H,
          buf.cell_states.data_ptr<acc_t>() + step.next * B * H, hidden_prev, hidden_next,
          buf.output.data_ptr<scalar_t>() + step.t * B * R,
          kProjected ? buf.hidden_pre.data_ptr<scalar_t>() : nullptr, lengths, step.t, B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, class Act, bool kProjected, bool kPeephole>
void launch_backward_step(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.grad_output.size(2);
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;
  const auto stream = at::cuda::getCurrentCUDAStream();
  scalar_t* grad_gates_t = buf.grad_gates.data_ptr<scalar_t>() + step.t * B * 4 * H;
  if (B * H > 0) {
    peephole_backward_step_kernel<scalar_t, acc_t, Act, kProjected, kPeephole>
        <<<element_blocks(B * H), kThreads, 0, stream>>>(
            buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H,
            buf.cell_states.data_ptr<acc_t>() + step.next * B * H,
            buf.cell_states.data_ptr<acc_t>() + step.prev * B * H,
            buf.grad_hidden.data_ptr<scalar_t>(),
            buf.grad_output.data_ptr<scalar_t>() + step.t * B * R,
            kProjected ? buf.grad_hidden_pre.data_ptr<scalar_t>() : nullptr,
            buf.grad_cell.data_ptr<acc_t>(), grad_gates_t,
            kPeephole ? buf.grad_peephole_rows.data_ptr<acc_t>() : nullptr,
            kProjected ? buf.hidden_pre_all.data_ptr<scalar_t>() + step.t * B * H : nullptr,
            buf.peephole.data_ptr<scalar_t>(), lengths, step.t, B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // dL/dh_{t-1} = dL/da_t W_hh (cuBLAS), then the rows past their end take dL/dh_t unchanged.
  gemm_row_major<scalar_t>(B, R, 4 * H, grad_gates_t, buf.weight_hh.data_ptr<scalar_t>(), 0.0,
                           buf.grad_hidden_next.data_ptr<scalar_t>());
  if (lengths != nullptr && B * R > 0) {
    carry_inactive_rows_kernel<scalar_t><<<element_blocks(B * R), kThreads, 0, stream>>>(
        buf.grad_hidden_next.data_ptr<scalar_t>(), buf.grad_hidden.data_ptr<scalar_t>(), lengths,
        step.t, B, R);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---- persistent kernels ------------------------------------------------------------------

// The persistent kernels are chosen by default up to this many batch rows x hidden units:
// beyond, cuBLAS GEMMs per step use the GPU better. Measured on an H100
// (benchmarks/recurrence_crossover.py, T=100) with the first persistent kernels (one
// warp per dot product, 46d7fc7): persistent was faster at B=8 for H <= 512 and at B=16 for
// H=256, slower at B=8, H=1024 and for B >= 32, and within 10% of the steps at B=16, H=512 and
// B=8, H=1024 (B x H = 8192). The tiled kernels here issue one shared-memory vector load per 8
// multiply-adds (the old ones two scalar loads per one) and have 16 independent sums per thread
// instead of one dependent chain per warp, so B x H = 8192 is taken as persistent too; an
// estimate until the crossover is measured again for them (benchmarks/gpu_session.sh crossover).
constexpr int64_t kPersistentMaxWork = 8192;

template <typename scalar_t, class Act>
bool launch_forward_persistent(const PeepholeForwardBuffers& buf, int64_t T, bool reverse,
                               bool whole_history) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4;
  if (B == 0 || !persistent_wanted(B * H <= kPersistentMaxWork)) return false;
  return launch_persistent(
      peephole_forward_persistent_kernel<scalar_t, acc_t, Act>, H,
      1,  // 4 w rows of W_hh: a multiple of kTile already
      [&](int64_t w) { return block_matmul_shape<scalar_t, acc_t>(B, 4 * w, H, 0); },
      [&](int64_t units, const BlockMatmulShape& shape) {
        return PersistentForwardParams<scalar_t, acc_t>{
            buf.gates.data_ptr<scalar_t>(),         buf.bias.data_ptr<scalar_t>(),
            buf.peephole.data_ptr<scalar_t>(),      buf.weight_hh_t.data_ptr<scalar_t>(),
            buf.hidden_states.data_ptr<scalar_t>(), buf.cell_states.data_ptr<acc_t>(),
            buf.output.data_ptr<scalar_t>(),
            buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr,
            T, B, H, units, reverse, whole_history, shape};
      });
}

template <typename scalar_t, class Act, bool kPeephole>
bool launch_backward_persistent(const PeepholeBackwardBuffers& buf, int64_t T, bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4;
  if (B == 0 || !persistent_wanted(B * H <= kPersistentMaxWork)) return false;
  return launch_persistent(
      peephole_backward_persistent_kernel<scalar_t, acc_t, Act, kPeephole>, H, kTile,
      [&](int64_t w) {
        return block_matmul_shape<scalar_t, acc_t>(B, w, 4 * H, B * w * int64_t(sizeof(acc_t)));
      },
      [&](int64_t units, const BlockMatmulShape& shape) {
        return PersistentBackwardParams<scalar_t, acc_t>{
            buf.gates.data_ptr<scalar_t>(),
            buf.cell_states.data_ptr<acc_t>(),
            buf.grad_output.data_ptr<scalar_t>(),
            buf.weight_hh.data_ptr<scalar_t>(),
            buf.peephole.data_ptr<scalar_t>(),
            buf.grad_hidden.data_ptr<scalar_t>(),
            buf.grad_hidden_next.data_ptr<scalar_t>(),
            buf.grad_cell.data_ptr<acc_t>(),
            buf.grad_gates.data_ptr<scalar_t>(),
            kPeephole ? buf.grad_peephole_rows.data_ptr<acc_t>() : nullptr,
            buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr,
            T, B, H, units, reverse, shape};
      });
}

// ---- dispatch and registration -------------------------------------------------------------

// Calls fn(scalar_t{}) with the dtype of `typed`.
template <class Fn>
void dispatch_cuda_dtype(const Tensor& typed, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, typed.scalar_type(),
                                  "tlstm_peephole_cuda", [&] { fn(scalar_t{}); });
}

void forward_step_cuda(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  // a_t += h_{t-1} W_hh^T (cuBLAS), then the element-wise kernel
  const int64_t B = buf.gates.size(1), H4 = buf.gates.size(2), R = buf.hidden_states.size(2);
  dispatch_cuda_dtype(buf.gates, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    gemm_row_major<scalar_t>(B, H4, R, buf.hidden_states.data_ptr<scalar_t>() + step.prev * B * R,
                             buf.weight_hh_t.data_ptr<scalar_t>(), 1.0,
                             buf.gates.data_ptr<scalar_t>() + step.gate * B * H4);
    dispatch_step_switches(buf, [&](auto act, auto proj) {
      launch_forward_step<scalar_t, decltype(act), decltype(proj)::value>(buf, step);
    });
  });
}

void backward_step_cuda(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  dispatch_cuda_dtype(buf.gates, [&](auto scalar) {
    dispatch_step_switches(buf, [&](auto act, auto proj, auto peep) {
      launch_backward_step<decltype(scalar), decltype(act), decltype(proj)::value,
                           decltype(peep)::value>(buf, step);
    });
  });
}

// The whole recurrence in one persistent kernel; the driver asks only without a projection,
// and a false return (batch too large, W_hh too big for the grid) sends it to the steps.
bool forward_sequence_cuda(const PeepholeForwardBuffers& buf, int64_t T, bool reverse,
                           bool whole_history) {
  bool ran = false;
  dispatch_cuda_dtype(buf.gates, [&](auto scalar) {
    dispatch_activation(buf.activation, [&](auto act) {
      ran = launch_forward_persistent<decltype(scalar), decltype(act)>(buf, T, reverse,
                                                                        whole_history);
    });
  });
  return ran;
}

bool backward_sequence_cuda(const PeepholeBackwardBuffers& buf, int64_t T, bool reverse) {
  bool ran = false;
  dispatch_cuda_dtype(buf.gates, [&](auto scalar) {
    dispatch_activation(buf.activation, [&](auto act) {
      dispatch_flag(buf.grad_peephole_rows.numel() > 0, [&](auto peep) {
        ran = launch_backward_persistent<decltype(scalar), decltype(act), decltype(peep)::value>(
            buf, T, reverse);
      });
    });
  });
  return ran;
}

// The input's dtype and device; other arguments are checked against the input by the driver.
void check_cuda_input(const char* op, const Tensor& input) {
  check_floating(op, input, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}, "CUDA");
  TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device, got ", input.device());
}

struct CudaBackend {
  static constexpr PeepholeStepKernels kernels{
      .forward_step = forward_step_cuda,
      .backward_step = backward_step_cuda,
      .forward_sequence = forward_sequence_cuda,
      .backward_sequence = backward_sequence_cuda,
  };
  static void check_input(const char* op, const Tensor& input) { check_cuda_input(op, input); }
  using Guard = c10::cuda::CUDAGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CUDA, m) {
  m.impl("peephole_lstm_forward", &peephole_lstm_forward_op<CudaBackend>);
  m.impl("peephole_lstm_backward", &peephole_lstm_backward_op<CudaBackend>);
}

}  // namespace tlstm
