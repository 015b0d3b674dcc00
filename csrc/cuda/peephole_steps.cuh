// Device code of the peephole LSTM's step kernels: the fused element-wise pass of one step,
// forward and backward, on the cell math of ../peephole_lstm_cell.h (which the CPU runs too).
// peephole_lstm_cuda.cu launches them around cuBLAS's recurrent GEMM.
#pragma once

#include <cstdint>

#include "../peephole_lstm_cell.h"
#include "device_support.cuh"

namespace tlstm {

// ---- forward -----------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, class Act, bool kProjected>
__global__ void peephole_forward_step_kernel(
    scalar_t* __restrict__ gates,               // [B, 4H] in: a_t without biases; out: i, f, g, o
    const scalar_t* __restrict__ bias,          // [4H]
    const scalar_t* __restrict__ peephole,      // [3H] w_ci, w_cf, w_co
    const acc_t* __restrict__ cell_prev,        // [B, H]
    acc_t* __restrict__ cell_next,              // [B, H]
    const scalar_t* __restrict__ hidden_prev,   // [B, H] (no projection)
    scalar_t* __restrict__ hidden_next,         // [B, H] (no projection)
    scalar_t* __restrict__ output,              // [B, H] (no projection)
    scalar_t* __restrict__ hidden_pre,          // [B, H] (projection)
    const int64_t* __restrict__ lengths,        // [B] or null
    int64_t t, int64_t B, int64_t H) {
  const int64_t n = B * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / H, j = idx - b * H;
    scalar_t* a = gates + b * 4 * H;
    if (!row_active(lengths, b, t)) {  // past the sequence's end: the state stays
      cell_next[idx] = cell_prev[idx];
      if (kProjected) {
        hidden_pre[idx] = scalar_t(0);
      } else {
        hidden_next[idx] = hidden_prev[idx];
        output[idx] = scalar_t(0);
      }
      continue;
    }
    const auto s = peephole_cell_forward<Act, acc_t>(
        acc_t(a[j]) + acc_t(bias[j]), acc_t(a[H + j]) + acc_t(bias[H + j]),
        acc_t(a[2 * H + j]) + acc_t(bias[2 * H + j]), acc_t(a[3 * H + j]) + acc_t(bias[3 * H + j]),
        cell_prev[idx], acc_t(peephole[j]), acc_t(peephole[H + j]), acc_t(peephole[2 * H + j]));
    a[j] = scalar_t(s.i);
    a[H + j] = scalar_t(s.f);
    a[2 * H + j] = scalar_t(s.g);
    a[3 * H + j] = scalar_t(s.o);
    cell_next[idx] = s.c;
    if (kProjected) {
      hidden_pre[idx] = scalar_t(s.m);
    } else {
      hidden_next[idx] = scalar_t(s.m);
      output[idx] = scalar_t(s.m);
    }
  }
}

// ---- backward ----------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, class Act, bool kProjected, bool kPeephole>
__global__ void peephole_backward_step_kernel(
    const scalar_t* __restrict__ gates,          // [B, 4H] saved i, f, g, o
    const acc_t* __restrict__ cell,              // [B, H] c_t
    const acc_t* __restrict__ cell_prev,         // [B, H] c_{t-1}
    const scalar_t* __restrict__ grad_hidden,    // [B, H] dL/dh_t from later steps (no projection)
    const scalar_t* __restrict__ grad_output,    // [B, H] dL/doutput_t (no projection)
    const scalar_t* __restrict__ grad_hidden_pre,  // [B, H] dL/dm_t (projection)
    acc_t* __restrict__ grad_cell,               // [B, H] in dL/dc_t, out dL/dc_{t-1}
    scalar_t* __restrict__ grad_gates,           // [B, 4H] out dL/da_t
    acc_t* __restrict__ grad_peephole_rows,      // [B, 3H] accumulated per row (peephole)
    scalar_t* __restrict__ hidden_pre,           // [B, H] out m_t (projection)
    const scalar_t* __restrict__ peephole,       // [3H]
    const int64_t* __restrict__ lengths, int64_t t, int64_t B, int64_t H) {
  const int64_t n = B * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / H, j = idx - b * H;
    const scalar_t* g = gates + b * 4 * H;
    scalar_t* da = grad_gates + b * 4 * H;
    if (!row_active(lengths, b, t)) {  // past the sequence's end: dL/dc passes through
      da[j] = da[H + j] = da[2 * H + j] = da[3 * H + j] = scalar_t(0);
      if (kProjected) hidden_pre[idx] = scalar_t(0);
      continue;
    }
    const acc_t dm = kProjected ? acc_t(grad_hidden_pre[idx])
                                : acc_t(grad_hidden[idx]) + acc_t(grad_output[idx]);
    const acc_t o = acc_t(g[3 * H + j]);
    const acc_t c = cell[idx], c_prev = cell_prev[idx];
    const auto d = peephole_cell_backward<Act, acc_t>(
        acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), o, c, c_prev, acc_t(peephole[j]),
        acc_t(peephole[H + j]), acc_t(peephole[2 * H + j]), dm, grad_cell[idx]);
    da[j] = scalar_t(d.a_i);
    da[H + j] = scalar_t(d.a_f);
    da[2 * H + j] = scalar_t(d.a_g);
    da[3 * H + j] = scalar_t(d.a_o);
    grad_cell[idx] = d.c_prev;
    if (kPeephole) {  // each (b, j) owns its slots: no atomics, the same sums every run
      acc_t* gp = grad_peephole_rows + b * 3 * H;
      gp[j] += d.a_i * c_prev;
      gp[H + j] += d.a_f * c_prev;
      gp[2 * H + j] += d.a_o * c;
    }
    if (kProjected) hidden_pre[idx] = scalar_t(o * Act::value(c));
  }
}

// Rows past their sequence's end pass dL/dh through: dst[b] = src[b] where t >= lengths[b].
template <typename scalar_t>
__global__ void carry_inactive_rows_kernel(scalar_t* __restrict__ dst,
                                           const scalar_t* __restrict__ src,
                                           const int64_t* __restrict__ lengths, int64_t t,
                                           int64_t B, int64_t R) {
  const int64_t n = B * R;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (!row_active(lengths, idx / R, t)) dst[idx] = src[idx];
  }
}

}  // namespace tlstm
