// CPU backend of the tensorized LSTM ops: the three row passes of a step (tensorized_lstm.h),
// each parallel over the N*B rows of the step. The forward and
// backward rows run the row code that CUDA runs too (tensorized_lstm_row.h), with a team of
// one lane, compiled for the running CPU's vector extension (cpu_capability.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "../tensor_utils.h"
#include "../tensorized_lstm.h"
#include "cpu_capability.h"
#include "cpu_matmul.h"

namespace tlstm {
namespace {

// Rows of one task: enough elements per task that a thread's start-up cost is small.
int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(row_elements, 1));
}

// ---- rows --------------------------------------------------------------------------------

// The row code of tensorized_lstm_row.h, a one-lane team per row, parallel over the rows.
template <typename scalar_t, bool kNorm, bool kMemoryConv>
void forward_rows_kernel(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto p = forward_sequence<scalar_t>(buf).rows(s);
  at::parallel_for(0, p.n.B * p.n.N, rows_per_task(p.n.G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> qk(p.n.Kq);
    cpu::run_for_cpu([&](auto) {
      for (int64_t row = begin; row < end; ++row) {
        tensorized_forward_row<kNorm, kMemoryConv>(SerialTeam{}, p, row, qk.data());
      }
    });
  });
}

// Asks the cache for `count` elements from `p` (to be written: for_write), a line at a time.
template <typename T>
inline void prefetch(const T* p, int64_t count, bool for_write = false) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = count * int64_t(sizeof(T));
  for (int64_t o = 0; o < bytes; o += 64) {
    if (for_write) {
      __builtin_prefetch(c + o, 1, 2);
    } else {
      __builtin_prefetch(c + o, 0, 2);
    }
  }
}

template <typename scalar_t, bool kNorm, bool kMemoryConv>
void backward_rows_kernel(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto seq = backward_sequence<scalar_t>(buf, buf.grad_cconv);
  const auto p = seq.rows(s, cur);
  // Step s - 1's saved rows, read by the next call: they come from memory (the forward wrote
  // them long ago), and row by row the hardware prefetcher stops at each page's end.
  const auto next = seq.rows(s > 0 ? s - 1 : s, 1 - cur);
  const int64_t M = p.n.M;
  at::parallel_for(0, p.n.B * p.n.N, rows_per_task(p.n.G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> dq(p.n.Kq);
    cpu::run_for_cpu([&](auto) {
      for (int64_t row = begin; row < end; ++row) {
        tensorized_backward_row<kNorm, kMemoryConv>(SerialTeam{}, p, row, dq.data());
        if (s > 0) {
          prefetch(next.gates + row * 4 * M, 4 * M);
          prefetch(next.cells_prev + row * M, M);
          if (kNorm) prefetch(next.norm_hat + row * 5 * M, 5 * M);
          prefetch(next.grad_pre + row * p.n.G, p.n.G, /*for_write=*/true);
        }
      }
    });
  });
}

// ---- gather ------------------------------------------------------------------------------

template <typename scalar_t, bool kMemoryConv>
void gather_rows_kernel(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).gather(s, cur);
  at::parallel_for(0, p.n.B * p.n.N, rows_per_task(p.n.Kq * p.n.M), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> sources(p.n.Kq);
    std::vector<scalar_t> weights(p.n.Kq);
    cpu::run_for_cpu([&](auto) {
      for (int64_t row = begin; row < end; ++row) {
        tensorized_gather_row<kMemoryConv>(SerialTeam{}, p, row, sources.data(), weights.data());
      }
    });
  });
}

// ---- dispatch and registration -------------------------------------------------------------

void forward_rows_cpu(const TensorizedForwardBuffers& buf, int64_t s) {
  AT_DISPATCH_FLOATING_TYPES(buf.pre.scalar_type(), "tlstm_tensorized_forward_rows_cpu", [&] {
    dispatch_flags(buf.n.channel_norm, buf.n.memory_conv, [&](auto norm, auto memory_conv) {
      forward_rows_kernel<scalar_t, decltype(norm)::value, decltype(memory_conv)::value>(buf, s);
    });
  });
}

void backward_rows_cpu(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  AT_DISPATCH_FLOATING_TYPES(buf.grad_pre.scalar_type(), "tlstm_tensorized_backward_rows_cpu", [&] {
    dispatch_flags(buf.n.channel_norm, buf.n.memory_conv, [&](auto norm, auto memory_conv) {
      backward_rows_kernel<scalar_t, decltype(norm)::value, decltype(memory_conv)::value>(buf, s,
                                                                                          cur);
    });
  });
}

void gather_rows_cpu(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  AT_DISPATCH_FLOATING_TYPES(buf.grad_pre.scalar_type(), "tlstm_tensorized_gather_cpu", [&] {
    dispatch_flag(buf.n.memory_conv, [&](auto memory_conv) {
      gather_rows_kernel<scalar_t, decltype(memory_conv)::value>(buf, s, cur);
    });
  });
}

struct CpuBackend {
  static constexpr TensorizedStepKernels kernels{
      .matmul_out = cpu::matmul_out,
      .prepare_right_operand = cpu::prepare_right_operand,
      .forward_rows = forward_rows_cpu,
      .backward_rows = backward_rows_cpu,
      .gather_rows = gather_rows_cpu,
      .input_chunk_rows = cpu::kInferenceChunkRows,
      .matmul_rows_out = cpu::matmul_rows_out,
      .fold_input_projection = true,
  };
  static void check_input(const char* op, const Tensor& input, int64_t /*kernel_size*/,
                          int64_t /*memory_taps*/) {
    check_floating(op, input, {at::kFloat, at::kDouble}, "CPU");
  }
  using Guard = NoDeviceGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CPU, m) {
  m.impl("tensorized_lstm_forward", &tensorized_lstm_forward_op<CpuBackend>);
  m.impl("tensorized_lstm_backward", &tensorized_lstm_backward_op<CpuBackend>);
}

}  // namespace tlstm
