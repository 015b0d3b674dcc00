// Device code of the peephole LSTM's persistent kernels: the whole recurrence of one direction
// in one cooperative launch (launched by peephole_lstm_cuda.cu when they are chosen). Plain
// device code: tools/emulate_cuda compiles this header on the CPU.
//
// For small batches a step is too little work for a GEMM launch and a kernel launch. Here one
// launch runs every step: block k owns the hidden units [k*w, (k+1)*w) and keeps the W_hh
// rows (forward) or columns (backward) of its units in shared memory for the whole sequence.
// A step's recurrent term is a small matrix product inside the block (block_recurrent_matmul,
// block_matmul.cuh), whose other operand (h_{t-1} forward, dL/da_t backward) is staged from
// global memory. The cells of the block's units follow, and one grid-wide barrier ends the
// step. Only without a projection (R = H); the same saved buffers as the steps.
#pragma once

#include <cstdint>

#include "../peephole_lstm_cell.h"
#include "block_matmul.cuh"
#include "device_support.cuh"

namespace tlstm {

template <typename scalar_t, typename acc_t>
struct PersistentForwardParams {
  scalar_t* gates;             // [T, B, 4H] in: a_t without biases; out: i, f, g, o
  const scalar_t* bias;        // [4H]
  const scalar_t* peephole;    // [3H]
  const scalar_t* weight_hh_t; // [H, 4H]: W_hh^T
  scalar_t* hidden_states;     // [S, B, H]
  acc_t* cell_states;          // [S, B, H]
  scalar_t* output;            // [T, B, H]
  const int64_t* lengths;      // [B] or null
  int64_t T, B, H, units;      // units: hidden units per block
  bool reverse, whole_history;
  BlockMatmulShape shape;      // B x (4 units) x H
};

__device__ inline void step_slots_device(int64_t s, int64_t T, bool reverse, bool whole_history,
                                         int64_t& t, int64_t& prev, int64_t& next) {
  t = reverse ? T - 1 - s : s;
  if (whole_history) {
    prev = reverse ? t + 1 : t;
    next = reverse ? t : t + 1;
  } else {
    prev = s % 2;
    next = (s + 1) % 2;
  }
}

template <typename scalar_t, typename acc_t, class Act>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    peephole_forward_persistent_kernel(PersistentForwardParams<scalar_t, acc_t> p) {
  TLSTM_DYNAMIC_SHARED(shared);
  const int64_t B = p.B, H = p.H, w = p.units, j0 = int64_t(blockIdx.x) * w;
  const BlockMatmulShape& shape = p.shape;
  const BlockMatmulSmem<scalar_t, acc_t> m(shared, shape);
  auto grid = cooperative_groups::this_grid();

  // Row r = g*w + jj of m.w is row g*H + j0 + jj of W_hh (zeros past H); with jj fastest the
  // reads of W_hh^T [H, 4H] come in runs of w.
  for (int64_t idx = threadIdx.x; idx < 4 * w * H; idx += blockDim.x) {
    const int64_t k = idx / (4 * w), r = idx - k * 4 * w, g = r / w, j = j0 + r % w;
    m.w_at(shape, r, k) = j < H ? p.weight_hh_t[k * 4 * H + g * H + j] : scalar_t(0);
  }
  m.zero_padding(shape, B);
  __syncthreads();
  for (int64_t s = 0; s < p.T; ++s) {
    int64_t t, prev, next;
    step_slots_device(s, p.T, p.reverse, p.whole_history, t, prev, next);
    const scalar_t* hidden_prev = p.hidden_states + prev * B * H;
    block_recurrent_matmul(hidden_prev, B, shape, m);  // h_{t-1} W_hh^T for the block's rows
    scalar_t* gates = p.gates + t * B * 4 * H;
    const acc_t* cell_prev = p.cell_states + prev * B * H;
    acc_t* cell_next = p.cell_states + next * B * H;
    scalar_t* hidden_next = p.hidden_states + next * B * H;
    scalar_t* output = p.output + t * B * H;
    for (int64_t e = threadIdx.x; e < B * w; e += blockDim.x) {
      const int64_t b = e / w, jj = e - b * w, j = j0 + jj, idx = b * H + j;
      if (j >= H) continue;
      if (!row_active(p.lengths, b, t)) {
        cell_next[idx] = cell_prev[idx];
        hidden_next[idx] = hidden_prev[idx];
        output[idx] = scalar_t(0);
        continue;
      }
      scalar_t* a = gates + b * 4 * H;
      const auto c = peephole_cell_forward<Act, acc_t>(
          acc_t(a[j]) + m.result(shape, b, jj) + acc_t(p.bias[j]),
          acc_t(a[H + j]) + m.result(shape, b, w + jj) + acc_t(p.bias[H + j]),
          acc_t(a[2 * H + j]) + m.result(shape, b, 2 * w + jj) + acc_t(p.bias[2 * H + j]),
          acc_t(a[3 * H + j]) + m.result(shape, b, 3 * w + jj) + acc_t(p.bias[3 * H + j]),
          cell_prev[idx], acc_t(p.peephole[j]), acc_t(p.peephole[H + j]),
          acc_t(p.peephole[2 * H + j]));
      a[j] = scalar_t(c.i);
      a[H + j] = scalar_t(c.f);
      a[2 * H + j] = scalar_t(c.g);
      a[3 * H + j] = scalar_t(c.o);
      cell_next[idx] = c.c;
      hidden_next[idx] = scalar_t(c.m);
      output[idx] = scalar_t(c.m);
    }
    grid.sync();  // h_t of every unit is written before any block reads it
  }
}

template <typename scalar_t, typename acc_t>
struct PersistentBackwardParams {
  const scalar_t* gates;         // [T, B, 4H] saved i, f, g, o
  const acc_t* cell_states;      // [T+1, B, H]
  const scalar_t* grad_output;   // [T, B, H]
  const scalar_t* weight_hh;     // [4H, H]
  const scalar_t* peephole;      // [3H]
  const scalar_t* grad_h_n;      // [B, H] dL/dh of the final state
  scalar_t* grad_h0;             // [B, H] out: dL/dh_0
  acc_t* grad_cell;              // [B, H] in dL/dc_T, out dL/dc_0
  scalar_t* grad_gates;          // [T, B, 4H] out
  acc_t* grad_peephole_rows;     // [B, 3H] or null
  const int64_t* lengths;        // [B] or null
  int64_t T, B, H, units;
  bool reverse;
  BlockMatmulShape shape;        // B x units x 4H; extra: dL/dh of the units [B, units]
};

template <typename scalar_t, typename acc_t, class Act, bool kPeephole>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    peephole_backward_persistent_kernel(PersistentBackwardParams<scalar_t, acc_t> p) {
  TLSTM_DYNAMIC_SHARED(shared);
  const int64_t B = p.B, H = p.H, w = p.units, j0 = int64_t(blockIdx.x) * w;
  const BlockMatmulShape& shape = p.shape;
  const BlockMatmulSmem<scalar_t, acc_t> m(shared, shape);
  acc_t* grad_h = reinterpret_cast<acc_t*>(m.extra);  // [B, w]
  auto grid = cooperative_groups::this_grid();

  // Row jj of m.w is column j0 + jj of W_hh (zeros past H and in the padding rows).
  for (int64_t idx = threadIdx.x; idx < shape.rows_w * 4 * H; idx += blockDim.x) {
    const int64_t row = idx / shape.rows_w, jj = idx - row * shape.rows_w, j = j0 + jj;
    m.w_at(shape, jj, row) = jj < w && j < H ? p.weight_hh[row * H + j] : scalar_t(0);
  }
  m.zero_padding(shape, B);
  for (int64_t e = threadIdx.x; e < B * w; e += blockDim.x) {
    const int64_t b = e / w, j = j0 + e % w;
    grad_h[e] = j < H ? acc_t(p.grad_h_n[b * H + j]) : acc_t(0);
  }
  __syncthreads();
  // dL/dh of the units after step t_done: dL/da_{t_done} W_hh where that step ran, else kept;
  // written to out (if any) for every row.
  auto recurrent_grad = [&](int64_t t_done, scalar_t* out) {
    block_recurrent_matmul(p.grad_gates + t_done * B * 4 * H, B, shape, m);
    for (int64_t e = threadIdx.x; e < B * w; e += blockDim.x) {
      const int64_t b = e / w, jj = e - b * w, j = j0 + jj;
      if (j >= H) continue;
      if (row_active(p.lengths, b, t_done)) grad_h[e] = m.result(shape, b, jj);
      if (out != nullptr) out[b * H + j] = scalar_t(grad_h[e]);
    }
    __syncthreads();
  };
  for (int64_t s = p.T - 1; s >= 0; --s) {
    int64_t t, prev, next;
    step_slots_device(s, p.T, p.reverse, /*whole_history=*/true, t, prev, next);
    if (s < p.T - 1) {
      int64_t t_done, unused0, unused1;
      step_slots_device(s + 1, p.T, p.reverse, true, t_done, unused0, unused1);
      recurrent_grad(t_done, nullptr);
    }
    const scalar_t* g_t = p.gates + t * B * 4 * H;
    const acc_t* cell = p.cell_states + next * B * H;
    const acc_t* cell_prev = p.cell_states + prev * B * H;
    scalar_t* da_t = p.grad_gates + t * B * 4 * H;
    for (int64_t e = threadIdx.x; e < B * w; e += blockDim.x) {
      const int64_t b = e / w, jj = e - b * w, j = j0 + jj, idx = b * H + j;
      if (j >= H) continue;
      scalar_t* da = da_t + b * 4 * H;
      if (!row_active(p.lengths, b, t)) {
        da[j] = da[H + j] = da[2 * H + j] = da[3 * H + j] = scalar_t(0);
        continue;
      }
      const scalar_t* g = g_t + b * 4 * H;
      const acc_t dm = grad_h[e] + acc_t(p.grad_output[t * B * H + idx]);
      const acc_t c = cell[idx], c_prev = cell_prev[idx];
      const auto d = peephole_cell_backward<Act, acc_t>(
          acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(g[3 * H + j]), c, c_prev,
          acc_t(p.peephole[j]), acc_t(p.peephole[H + j]), acc_t(p.peephole[2 * H + j]), dm,
          p.grad_cell[idx]);
      da[j] = scalar_t(d.a_i);
      da[H + j] = scalar_t(d.a_f);
      da[2 * H + j] = scalar_t(d.a_g);
      da[3 * H + j] = scalar_t(d.a_o);
      p.grad_cell[idx] = d.c_prev;
      if (kPeephole) {
        acc_t* gp = p.grad_peephole_rows + b * 3 * H;
        gp[j] += d.a_i * c_prev;
        gp[H + j] += d.a_f * c_prev;
        gp[2 * H + j] += d.a_o * c;
      }
    }
    grid.sync();  // dL/da_t of every unit is written before any block reads it
  }
  int64_t t_first, unused0, unused1;
  step_slots_device(0, p.T, p.reverse, true, t_first, unused0, unused1);
  recurrent_grad(t_first, p.grad_h0);
}

}  // namespace tlstm
