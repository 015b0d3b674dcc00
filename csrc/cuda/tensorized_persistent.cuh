// Device code of the tensorized LSTM's persistent kernels: the whole recurrence of one
// direction in one cooperative launch (launched by tensorized_lstm_cuda.cu when they are
// chosen), for the 2-D cell (its locations are the P rows; the 3-D cell runs the steps). Plain device code: tools/emulate_cuda compiles this header on the CPU.
//
// For small B*P a step's three launches (im2col, GEMM, rows) cost more host time than the GPU
// spends on them (measured on an H100: 41-48 us a step at every depth). Here one launch runs
// every step. The step GEMM is split by its output columns over the blocks, each keeping its
// columns of W_col in shared memory for the whole sequence (block_recurrent_matmul,
// block_matmul.cuh); a grid-wide barrier; then a warp per (b, p) row runs the same row code as
// the step kernels, which needs a whole row of A (the channel norms, the softmax over K) and
// the neighbours' cells; a second barrier ends the step. The forward's rows also scatter their
// new hidden row into next step's X_col (each element of it has one writer: the hidden row it
// copies), so im2col needs no phase of its own; the taps that read the input row or no row stay
// zero in X_col, as the input row's term comes into the rows from input_pre (one GEMM for all
// steps before the kernel, tensorized_lstm.cpp), as in the step kernels. The backward's phases: the gather of step s+1 and the rows of step s (a warp per row:
// the gather of a row is all the rows pass of that row needs), then dX_col = dA W_col^T split by
// the columns of X_col. Two barriers a step either way.
#pragma once

#include <cstdint>

#include "block_matmul.cuh"
#include "device_support.cuh"
#include "tensorized_rows.cuh"

namespace tlstm {

// Row (b, p) of H_s, just written, copied into X_col wherever a tap of step s+1 reads it; that
// row's own taps that read no hidden row stay zero (the input row's term comes in the rows, from
// input_pre, as in the step kernels).
template <typename scalar_t, typename acc_t>
__device__ void scatter_hidden_row(const ForwardSequence<scalar_t, acc_t>& seq, scalar_t* x_col,
                                   int64_t s_next, int64_t row, int lane) {
  const RowSizes& n = seq.n;
  const int64_t b = n.sequence_of(row), p = n.location_of(row);
  const scalar_t* h = seq.hidden_before(s_next) + row * n.M;
  for (int64_t k = 0; k < n.taps; ++k) {
    const int64_t reader = p + n.c - k;  // tap k of row `reader` reads row p
    if (reader >= 1 && reader <= n.P) {
      scalar_t* dst = x_col + (n.row_at(b, reader) * n.taps + k) * n.M;
      for (int64_t m = lane; m < n.M; m += 32) dst[m] = h[m];
    }
  }
}

template <typename scalar_t, typename acc_t>
struct TensorizedPersistentForwardParams {
  ForwardSequence<scalar_t, acc_t> seq;
  scalar_t* x_col;             // [P*B, K', M] the unfolded hidden rows of the current step
  const scalar_t* weight_col;  // [K'*M, G]
  int64_t units;               // output columns of A per block
  BlockMatmulShape shape;      // B*P x units x K'*M
};

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    tensorized_forward_persistent_kernel(TensorizedPersistentForwardParams<scalar_t, acc_t> p) {
  TLSTM_DYNAMIC_SHARED(shared);
  const ForwardSequence<scalar_t, acc_t>& seq = p.seq;
  const RowSizes n = seq.n;
  const int64_t rows = n.B * n.N, width = n.taps * n.M, w = p.units;
  const int64_t o0 = int64_t(blockIdx.x) * w;
  const BlockMatmulShape& shape = p.shape;
  const BlockMatmulSmem<scalar_t, acc_t> m(shared, shape);
  auto grid = cooperative_groups::this_grid();

  // Row r of m.w is column o0 + r of W_col (zeros past G and in the padding rows); with r
  // fastest the reads come in runs of the block's columns.
  for (int64_t idx = threadIdx.x; idx < shape.rows_w * width; idx += blockDim.x) {
    const int64_t k = idx / shape.rows_w, r = idx - k * shape.rows_w, o = o0 + r;
    m.w_at(shape, r, k) = r < w && o < n.G ? p.weight_col[k * n.G + o] : scalar_t(0);
  }
  m.zero_padding(shape, rows);
  // X_col of step 0: the hidden rows of H_0 each tap reads, zeros where it reads none
  const scalar_t* h0 = seq.hidden_before(0);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < rows * width;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t mm = idx % n.M, k = (idx / n.M) % n.taps, row = idx / width;
    const int64_t r = n.location_of(row) - n.c + k;
    p.x_col[idx] = r >= 1 && r <= n.P ? h0[n.row_at(n.sequence_of(row), r) * n.M + mm]
                                      : scalar_t(0);
  }
  grid.sync();
  for (int64_t s = 0; s < n.S; ++s) {
    block_recurrent_matmul(p.x_col, rows, shape, m);  // A's columns o0.. of step s
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t row = e / w, r = e - row * w, o = o0 + r;
      if (o < n.G) seq.pre[row * n.G + o] = scalar_t(m.result(shape, row, r));
    }
    grid.sync();  // every column of A is written before a row reads it
    const auto rows_params = seq.rows(s);
    for_each_warp_row(rows, [&](int64_t row, int lane) {
      warp_forward_row<scalar_t, acc_t, kNorm, kMemoryConv>(rows_params, row, lane);
      if (s + 1 < n.S) {
        __syncwarp();
        scatter_hidden_row(seq, p.x_col, s + 1, row, lane);
      }
    });
    grid.sync();  // H_s, C_s and X_col of step s+1 are written before step s+1 reads them
  }
}

template <typename scalar_t, typename acc_t>
struct TensorizedPersistentBackwardParams {
  BackwardSequence<scalar_t, acc_t> seq;  // cconv_stride P*B*M, grad_col [P*B, K', M]
  const scalar_t* weight_col;  // [K'*M, G]
  int64_t units;               // columns of X_col per block
  BlockMatmulShape shape;      // B*P x units x G
};

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    tensorized_backward_persistent_kernel(TensorizedPersistentBackwardParams<scalar_t, acc_t> p) {
  TLSTM_DYNAMIC_SHARED(shared);
  const BackwardSequence<scalar_t, acc_t>& seq = p.seq;
  const RowSizes n = seq.n;
  const int64_t rows = n.B * n.N, width = n.taps * n.M, w = p.units;
  const int64_t j0 = int64_t(blockIdx.x) * w;
  const BlockMatmulShape& shape = p.shape;
  const BlockMatmulSmem<scalar_t, acc_t> m(shared, shape);
  auto grid = cooperative_groups::this_grid();

  // Row r of m.w is row j0 + r of W_col (zeros past K'*M and in the padding rows).
  for (int64_t idx = threadIdx.x; idx < shape.rows_w * n.G; idx += blockDim.x) {
    const int64_t r = idx / n.G, o = idx - r * n.G, j = j0 + r;
    m.w_at(shape, r, o) = r < w && j < width ? p.weight_col[j * n.G + o] : scalar_t(0);
  }
  m.zero_padding(shape, rows);
  __syncthreads();
  // Step s reads dL/dH_s, dL/dC_s from slot cur = (S-1-s) % 2, as the driver's loop does.
  for (int64_t s = n.S - 1; s >= 0; --s) {
    const int64_t cur = (n.S - 1 - s) % 2;
    const auto rows_params = seq.rows(s, cur);
    const auto gather_params = seq.gather(s + 1, 1 - cur);  // used only if s + 1 < S
    for_each_warp_row(rows, [&](int64_t row, int lane) {
      if (s + 1 < n.S) {
        gather_row<scalar_t, acc_t, kMemoryConv>(gather_params, row, lane);
        __syncwarp();
      }
      warp_backward_row<scalar_t, acc_t, kNorm, kMemoryConv>(rows_params, row, lane);
    });
    grid.sync();  // every row of dA_s is written before the GEMM reads it
    block_recurrent_matmul(seq.grad_pre + s * rows * n.G, rows, shape, m);
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t row = e / w, r = e - row * w, j = j0 + r;
      if (j < width) seq.grad_col[row * width + j] = scalar_t(m.result(shape, row, r));
    }
    grid.sync();  // dX_col of step s is written before the gathers read it
  }
  const auto last_gather = seq.gather(0, (n.S - 1) % 2);
  for_each_warp_row(rows, [&](int64_t row, int lane) {
    gather_row<scalar_t, acc_t, kMemoryConv>(last_gather, row, lane);
  });
}

}  // namespace tlstm
