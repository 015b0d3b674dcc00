// CPU backend of the tensorized LSTM ops: the four row passes of a step (tensorized_lstm.h),
// each parallel over the B*P rows (or B*(P+1) for the gather) of the step. The forward and
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

// ---- im2col ------------------------------------------------------------------------------

template <typename scalar_t>
void im2col_kernel(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto& n = buf.n;
  const int64_t slot = buf.training ? s : 0, M = n.M;
  scalar_t* x_col = buf.x_col.data_ptr<scalar_t>() + slot * n.B * n.P * n.taps * M;
  const scalar_t* hidden = buf.hidden.data_ptr<scalar_t>() + (s % 2) * n.B * n.P * M;
  const scalar_t* proj = buf.input_proj.data_ptr<scalar_t>();
  const scalar_t* bias = buf.bias_ih.data_ptr<scalar_t>();
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, n.B * n.P, rows_per_task(n.taps * M), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n.P, p = row % n.P + 1;  // hidden row p of 1..P
      for (int64_t k = 0; k < n.taps; ++k) {
        scalar_t* dst = x_col + (row * n.taps + k) * M;
        const int64_t r = p - n.c + k;  // the Hcat row tap k reads
        if (r == 0) {  // the input row: x~_s + b_ih, or b_ih alone past the sequence's end
          if (s < sequence_length(lengths, b, n.T)) {
            const scalar_t* x = proj + (s * n.B + b) * M;
            for (int64_t m = 0; m < M; ++m) dst[m] = x[m] + bias[m];
          } else {
            std::copy_n(bias, M, dst);
          }
        } else if (r >= 1 && r <= n.P) {
          std::copy_n(hidden + (b * n.P + r - 1) * M, M, dst);
        } else {
          std::fill_n(dst, M, scalar_t(0));
        }
      }
    }
  });
}

// ---- rows --------------------------------------------------------------------------------

// The row code of tensorized_lstm_row.h, a one-lane team per row, parallel over the rows.
template <typename scalar_t, bool kNorm, bool kMemoryConv>
void forward_rows_kernel(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto p = forward_sequence<scalar_t>(buf).rows(s);
  at::parallel_for(0, p.n.B * p.n.P, rows_per_task(p.n.G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> qk(p.n.K);
    cpu::run_for_cpu([&](auto) {
      for (int64_t row = begin; row < end; ++row) {
        tensorized_forward_row<kNorm, kMemoryConv>(SerialTeam{}, p, row, qk.data());
      }
    });
  });
}

template <typename scalar_t, bool kNorm, bool kMemoryConv>
void backward_rows_kernel(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).rows(s, cur);
  at::parallel_for(0, p.n.B * p.n.P, rows_per_task(p.n.G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> dq(p.n.K);
    cpu::run_for_cpu([&](auto) {
      for (int64_t row = begin; row < end; ++row) {
        tensorized_backward_row<kNorm, kMemoryConv>(SerialTeam{}, p, row, dq.data());
      }
    });
  });
}

// ---- gather ------------------------------------------------------------------------------

template <typename scalar_t, bool kMemoryConv>
void gather_rows_kernel(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t M = n.M, P = n.P, rows = n.B * P;
  const scalar_t* grad_col = buf.grad_col.data_ptr<scalar_t>();    // [B, P, K', M]
  const scalar_t* grad_cconv = buf.grad_cconv.data_ptr<scalar_t>();  // [B, P, M]
  const scalar_t* q = kMemoryConv ? buf.q.data_ptr<scalar_t>() + s * rows * n.K : nullptr;
  const scalar_t* grad_hidden = buf.grad_hidden.data_ptr<scalar_t>() + cur * rows * M;
  const scalar_t* grad_cell = buf.grad_cell.data_ptr<scalar_t>() + cur * rows * M;
  scalar_t* grad_hidden_prev = buf.grad_hidden.data_ptr<scalar_t>() + (1 - cur) * rows * M;
  scalar_t* grad_cell_prev = buf.grad_cell.data_ptr<scalar_t>() + (1 - cur) * rows * M;
  scalar_t* grad_input_row = buf.grad_input_row.data_ptr<scalar_t>() + s * n.B * M;
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  // Item (b, r), r in 0..P: row r of Hcat of sequence b.
  at::parallel_for(0, n.B * (P + 1), rows_per_task(n.K * M), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (P + 1), r = item % (P + 1);
      const bool running = s < sequence_length(lengths, b, n.T) + n.delay;
      scalar_t* dh = r == 0 ? grad_input_row + b * M : grad_hidden_prev + (b * P + r - 1) * M;
      if (!running) {  // finished sequences pass dL/dH and dL/dC through; the input row gets 0
        if (r == 0) {
          std::fill_n(dh, M, scalar_t(0));
        } else {
          std::copy_n(grad_hidden + (b * P + r - 1) * M, M, dh);
          std::copy_n(grad_cell + (b * P + r - 1) * M, M, grad_cell_prev + (b * P + r - 1) * M);
        }
        continue;
      }
      // col2im: tap k of hidden row p = r + c - k read row r.
      std::fill_n(dh, M, scalar_t(0));
      for (int64_t k = 0; k < n.taps; ++k) {
        const int64_t p = r + n.c - k;
        if (p < 1 || p > P) continue;
        const scalar_t* src = grad_col + ((b * P + p - 1) * n.taps + k) * M;
        for (int64_t m = 0; m < M; ++m) dh[m] += src[m];
      }
      if (r == 0) continue;
      // The memory convolution: tap k of row p read C_{t-1} row clamp(p - c + k, 1, P).
      scalar_t* dc = grad_cell_prev + (b * P + r - 1) * M;
      if (!kMemoryConv) {
        std::copy_n(grad_cconv + (b * P + r - 1) * M, M, dc);
        continue;
      }
      std::fill_n(dc, M, scalar_t(0));
      for (int64_t p = std::max<int64_t>(1, r - n.c); p <= std::min<int64_t>(P, r + n.c); ++p) {
        scalar_t weight = 0;
        for (int64_t k = 0; k < n.K; ++k) {
          if (clamp_row(p - n.c + k, P) == r) weight += q[(b * P + p - 1) * n.K + k];
        }
        const scalar_t* src = grad_cconv + (b * P + p - 1) * M;
        for (int64_t m = 0; m < M; ++m) dc[m] += weight * src[m];
      }
    }
  });
}

// ---- dispatch and registration -------------------------------------------------------------

void im2col_cpu(const TensorizedForwardBuffers& buf, int64_t s) {
  AT_DISPATCH_FLOATING_TYPES(buf.x_col.scalar_type(), "tlstm_tensorized_im2col_cpu",
                             [&] { im2col_kernel<scalar_t>(buf, s); });
}

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
      .im2col = im2col_cpu,
      .forward_rows = forward_rows_cpu,
      .backward_rows = backward_rows_cpu,
      .gather_rows = gather_rows_cpu,
  };
  static void check_input(const char* op, const Tensor& input, int64_t /*kernel_size*/) {
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
