// Device code of the tensorized LSTM's step kernels (tensorized_lstm.h): the forward and
// backward rows and the gather. tensorized_lstm_cuda.cu launches them once per step around
// cuBLAS's step GEMMs; the persistent kernels (tensorized_persistent.cuh) call the same row code.
//
// The rows give one warp to each (b, location) row: a WarpTeam runs the row math of
// tensorized_lstm_row.h, which the CPU runs with a one-lane team; so does the gather. Plain
// device code: tools/emulate_cuda compiles this header on the CPU.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../tensorized_lstm_row.h"
#include "device_support.cuh"

namespace tlstm {

constexpr int kWarpsPerBlock = kThreads / 32;
// The rows keep the softmax weights and dL/dQ of a row in registers: memory taps (K, or K*K
// for the 3-D cell) up to this.
constexpr int kMaxMemoryTaps = 25;

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

// ---- rows --------------------------------------------------------------------------------

// The row code on a warp, its per-lane arrays in registers.
template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ inline void warp_forward_row(const ForwardRowsParams<scalar_t, acc_t>& p, int64_t row,
                                        int lane) {
  acc_t qk[kMaxMemoryTaps];
  tensorized_forward_row<kNorm, kMemoryConv>(WarpTeam{lane}, p, row, qk);
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ inline void warp_backward_row(const BackwardRowsParams<scalar_t, acc_t>& p,
                                         int64_t row, int lane) {
  acc_t dq[kMaxMemoryTaps];  // dL/dQ_k, summed per lane, then over the warp
  tensorized_backward_row<kNorm, kMemoryConv>(WarpTeam{lane}, p, row, dq);
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_forward_rows_kernel(ForwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.N, [&](int64_t row, int lane) {
    warp_forward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_backward_rows_kernel(BackwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.N, [&](int64_t row, int lane) {
    warp_backward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

// ---- gather ------------------------------------------------------------------------------

// A warp per location of every sequence (tensorized_gather_row), the step kernels' and the
// persistent kernel's.
template <typename scalar_t, typename acc_t, bool kMemoryConv>
__device__ void gather_row(const GatherParams<scalar_t, acc_t>& p, int64_t row, int lane) {
  int64_t sources[kMaxMemoryTaps];
  acc_t weights[kMaxMemoryTaps];
  tensorized_gather_row<kMemoryConv>(WarpTeam{lane}, p, row, sources, weights);
}

template <typename scalar_t, typename acc_t, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_gather_kernel(GatherParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.N, [&](int64_t row, int lane) {
    gather_row<scalar_t, acc_t, kMemoryConv>(p, row, lane);
  });
}

}  // namespace tlstm
