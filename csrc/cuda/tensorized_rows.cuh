// Device code of the tensorized LSTM's step kernels (tensorized_lstm.h): im2col, the forward and
// backward rows, and the gather. tensorized_lstm_cuda.cu launches them once per step around
// cuBLAS's step GEMM; the persistent kernels (tensorized_persistent.cuh) call the same row code.
//
// The rows give one warp to each (b, p) row: a WarpTeam runs the row math of
// tensorized_lstm_row.h, which the CPU runs with a one-lane team. im2col and the gather are
// element-wise. Plain device code: tools/emulate_cuda compiles this header on the CPU.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../tensorized_lstm_row.h"
#include "device_support.cuh"

namespace tlstm {

constexpr int kWarpsPerBlock = kThreads / 32;
// The rows keep the softmax weights and dL/dQ of a row in registers: kernel sizes up to this.
constexpr int kMaxKernelSize = 15;

template <typename acc_t>
__device__ inline acc_t warp_all_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The 32 lanes of a warp as the row code's team: sums by butterfly shuffles (every lane gets
// the same sum, in a fixed order).
struct WarpTeam {
  static constexpr int kStride = 32;
  int lane_;
  __device__ int lane() const { return lane_; }
  template <typename T>
  __device__ T sum(T v) const { return warp_all_sum(v); }
  __device__ void sync() const { __syncwarp(); }
};

// Calls fn(row, lane) for each of the rows [0, rows) that fall to this warp: a warp per row,
// over every warp of the grid.
template <class Fn>
__device__ inline void for_each_warp_row(int64_t rows, const Fn& fn) {
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows;
       row += warps) {
    fn(row, static_cast<int>(threadIdx.x % 32));
  }
}

// ---- im2col ------------------------------------------------------------------------------

// Channel m of row r of Hcat_{s-1} (rows 0..P, zero outside), as step s reads it.
template <typename scalar_t>
__device__ inline scalar_t hcat_value(const scalar_t* hidden,  // [B, P, M] H_{s-1}
                                      const scalar_t* proj,    // [T, B, M]
                                      const scalar_t* bias,    // [M]
                                      const int64_t* lengths, const RowSizes& n, int64_t s,
                                      int64_t b, int64_t r, int64_t m) {
  if (r == 0) {  // the input row: x~_s + b_ih, or b_ih alone past the sequence's end
    return s < sequence_length(lengths, b, n.T)
               ? scalar_t(at::opmath_type<scalar_t>(proj[(s * n.B + b) * n.M + m]) +
                          at::opmath_type<scalar_t>(bias[m]))
               : bias[m];
  }
  return r >= 1 && r <= n.P ? hidden[(b * n.P + r - 1) * n.M + m] : scalar_t(0);
}

template <typename scalar_t>
__global__ void tensorized_im2col_kernel(scalar_t* __restrict__ x_col,        // [B, P, K', M]
                                         const scalar_t* __restrict__ hidden,  // [B, P, M]
                                         const scalar_t* __restrict__ proj,    // [T, B, M]
                                         const scalar_t* __restrict__ bias,    // [M]
                                         const int64_t* __restrict__ lengths, RowSizes n,
                                         int64_t s) {
  const int64_t total = n.B * n.P * n.taps * n.M;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx % n.M, k = (idx / n.M) % n.taps, row = idx / (n.M * n.taps);
    const int64_t b = row / n.P, p = row % n.P + 1;
    x_col[idx] = hcat_value(hidden, proj, bias, lengths, n, s, b, p - n.c + k, m);
  }
}

// ---- rows --------------------------------------------------------------------------------

// The row code on a warp, its per-lane arrays in registers.
template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ inline void warp_forward_row(const ForwardRowsParams<scalar_t, acc_t>& p, int64_t row,
                                        int lane) {
  acc_t qk[kMaxKernelSize];
  tensorized_forward_row<kNorm, kMemoryConv>(WarpTeam{lane}, p, row, qk);
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ inline void warp_backward_row(const BackwardRowsParams<scalar_t, acc_t>& p,
                                         int64_t row, int lane) {
  acc_t dq[kMaxKernelSize];  // dL/dQ_k, summed per lane, then over the warp
  tensorized_backward_row<kNorm, kMemoryConv>(WarpTeam{lane}, p, row, dq);
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_forward_rows_kernel(ForwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.P, [&](int64_t row, int lane) {
    warp_forward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_backward_rows_kernel(BackwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.P, [&](int64_t row, int lane) {
    warp_backward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

// ---- gather ------------------------------------------------------------------------------

// Channel m of row r (0: the input row) of batch element b: dL/dH_{s-1} and dL/dC_{s-1}, or
// dL/d(input row of step s).
template <typename scalar_t, typename acc_t, bool kMemoryConv>
__device__ inline void tensorized_gather_element(const GatherParams<scalar_t, acc_t>& p,
                                                 int64_t b, int64_t r, int64_t m) {
  const RowSizes& n = p.n;
  const int64_t state = (b * n.P + r - 1) * n.M + m;  // row r of the state tensors (r >= 1)
  if (!row_running(p.lengths, b, n, p.s)) {  // finished: dL/dH and dL/dC pass through, the
    if (r == 0) {                            // input row gets nothing
      p.grad_input_row[b * n.M + m] = scalar_t(0);
    } else {
      p.grad_hidden_prev[state] = p.grad_hidden[state];
      p.grad_cell_prev[state] = p.grad_cell[state];
    }
    return;
  }
  acc_t dh = 0;  // col2im: tap k of hidden row p = r + c - k read row r
  for (int64_t k = 0; k < n.taps; ++k) {
    const int64_t pr = r + n.c - k;
    if (pr >= 1 && pr <= n.P) {
      dh += acc_t(p.grad_col[((b * n.P + pr - 1) * n.taps + k) * n.M + m]);
    }
  }
  if (r == 0) {
    p.grad_input_row[b * n.M + m] = scalar_t(dh);
    return;
  }
  p.grad_hidden_prev[state] = dh;
  acc_t dc = 0;
  if (kMemoryConv) {  // tap k of row p read C_{t-1} row clamp(p - c + k, 1, P)
    const int64_t lo = r - n.c < 1 ? 1 : r - n.c, hi = r + n.c > n.P ? n.P : r + n.c;
    for (int64_t pr = lo; pr <= hi; ++pr) {
      acc_t weight = 0;
      for (int64_t k = 0; k < n.K; ++k) {
        if (clamp_row(pr - n.c + k, n.P) == r) weight += acc_t(p.q[(b * n.P + pr - 1) * n.K + k]);
      }
      dc += weight * p.grad_cconv[(b * n.P + pr - 1) * n.M + m];
    }
  } else {
    dc = p.grad_cconv[state];
  }
  p.grad_cell_prev[state] = dc;
}

template <typename scalar_t, typename acc_t, bool kMemoryConv>
__global__ void tensorized_gather_kernel(GatherParams<scalar_t, acc_t> p) {
  const RowSizes n = p.n;
  const int64_t total = n.B * (n.P + 1) * n.M;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx % n.M, item = idx / n.M;
    tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, item / (n.P + 1), item % (n.P + 1),
                                                             m);
  }
}

// Gather of one (b, p) row by a warp; the warp of row p = 1 also gathers the input row.
template <typename scalar_t, typename acc_t, bool kMemoryConv>
__device__ void gather_row(const GatherParams<scalar_t, acc_t>& p, int64_t row, int lane) {
  const int64_t b = row / p.n.P, r = row % p.n.P + 1;
  for (int64_t m = lane; m < p.n.M; m += 32) {
    tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, b, r, m);
    if (r == 1) tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, b, 0, m);
  }
}

}  // namespace tlstm
