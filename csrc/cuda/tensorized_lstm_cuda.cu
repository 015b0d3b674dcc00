// CUDA backend of the tensorized LSTM ops: the four row passes of a step (tensorized_lstm.h),
// plugged into the shared driver, which runs the input projection and the weight gradients as
// cuBLAS GEMMs through ATen on the current stream; the step GEMMs call cuBLAS directly
// (cublas_gemm.cuh), as a step's other launches take a few microseconds of host time each.
//
// The row passes give one warp to each (b, p) row: its lanes stride over the M channels and
// the channel norms' statistics are warp reductions (butterfly shuffles: every lane gets the
// same sum, in a fixed order). im2col and the gather are element-wise. For small B*P the whole
// recurrence runs instead as one persistent kernel per direction (section "persistent
// kernels"), which calls the same row code. Inputs may be float32,
// float64, float16 or bfloat16; statistics, cells and accumulations are in the op-math type.
// Every index is 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cooperative_groups.h>

#include "../checks.h"
#include "../dispatch.h"
#include "../fast_math.h"
#include "../matmul.h"
#include "../tensorized_lstm.h"
#include "cublas_gemm.cuh"
#include "persistent_launch.cuh"

namespace tlstm {
namespace {

inline unsigned int blocks_for(int64_t n, int64_t per_block) {
  const int64_t max_blocks =
      int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min((n + per_block - 1) / per_block, max_blocks)));
}

// ---- device code (tools/emulate_cuda/compare_tensorized_kernels.py runs this section on the
// CPU, the step kernels against the persistent ones) ---------------------------------------

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr double kNormEps = 1e-5;
// The backward keeps dL/dQ of a row in registers: kernel sizes up to this on CUDA.
constexpr int kMaxKernelSize = 15;

template <typename acc_t>
__device__ inline acc_t warp_all_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// lengths[b] clamped to [0, T] (the op checks the values only on the CPU).
__device__ inline int64_t sequence_length(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : max(int64_t{0}, min(lengths[b], T));
}

// Step s is the last that reads an input of sequence b: the returned state is the one after it.
__device__ inline bool last_input_step(const int64_t* lengths, int64_t b, int64_t T, int64_t s) {
  return s + 1 == sequence_length(lengths, b, T);
}

__device__ inline int64_t clamp_row(int64_t r, int64_t P) { return r < 1 ? 1 : (r > P ? P : r); }

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

// Device-side copy of the sizes (the host struct holds bools and is trivially copyable).
struct Sizes {
  int64_t T, B, M, P, K, c, taps, G, S, delay;
};

// ---- im2col ------------------------------------------------------------------------------

// Channel m of row r of Hcat_{s-1} (rows 0..P, zero outside), as step s reads it.
template <typename scalar_t>
__device__ inline scalar_t hcat_value(const scalar_t* hidden,  // [B, P, M] H_{s-1}
                                      const scalar_t* proj,    // [T, B, M]
                                      const scalar_t* bias,    // [M]
                                      const int64_t* lengths, const Sizes& n, int64_t s,
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
                                         const int64_t* __restrict__ lengths, Sizes n, int64_t s) {
  const int64_t total = n.B * n.P * n.taps * n.M;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx % n.M, k = (idx / n.M) % n.taps, row = idx / (n.M * n.taps);
    const int64_t b = row / n.P, p = row % n.P + 1;
    x_col[idx] = hcat_value(hidden, proj, bias, lengths, n, s, b, p - n.c + k, m);
  }
}

// ---- forward rows ------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
struct ForwardRowsParams {
  const scalar_t* pre;        // [B*P, G]
  const scalar_t* bias;       // [G]
  const scalar_t* gamma;      // [5, M]
  const scalar_t* beta;       // [5, M]
  const scalar_t* hidden_prev;  // [B*P, M]
  scalar_t* hidden_next;      // [B*P, M]
  const acc_t* cells_prev;    // [B*P, M]
  acc_t* cells_next;          // [B*P, M]
  scalar_t* gates;            // [B*P, 4M]
  scalar_t* q;                // [B*P, K]
  acc_t* norm_hat;            // [B*P, 5, M]
  acc_t* norm_rstd;           // [B*P, 5]
  scalar_t* output;           // [T, B, M]
  scalar_t* state_hidden;     // [B*P, M] the returned H (after each sequence's last input step)
  acc_t* state_cell;          // [B*P, M] the returned C
  const int64_t* lengths;
  Sizes n;
  int64_t s;
};

// The forward buffers of a call (TensorizedForwardBuffers' pointers), and where step s finds
// its slots in them: the step kernels and the persistent kernel take their slots from here.
template <typename scalar_t, typename acc_t>
struct ForwardSequence {
  const scalar_t* input_proj;  // [T, B, M]
  const scalar_t* bias_ih;     // [M]
  const scalar_t* bias_hh;     // [G]
  const scalar_t* gamma;       // [5, M] or null
  const scalar_t* beta;        // [5, M] or null
  scalar_t* x_col;             // [slots, B*P, K', M]
  scalar_t* pre;               // [B*P, G]
  scalar_t* hidden;            // [2, B*P, M]
  acc_t* cells;                // [S+1 or 2, B*P, M]
  scalar_t* gates;             // [slots, B*P, 4M]
  scalar_t* q;                 // [slots, B*P, K] or null
  acc_t* norm_hat;             // [slots, B*P, 5, M] or null
  acc_t* norm_rstd;            // [slots, B*P, 5] or null
  scalar_t* output;            // [T, B, M]
  scalar_t* state_hidden;      // [B*P, M]
  acc_t* state_cell;           // [B*P, M]
  const int64_t* lengths;      // [B] or null
  Sizes n;
  bool training;

  // the unfolded Hcat_{s-1} of step s
  __host__ __device__ scalar_t* x_col_of(int64_t s) const {
    return x_col + (training ? s : 0) * n.B * n.P * n.taps * n.M;
  }
  // H_{s-1}, read by step s (H_s goes to the other slot)
  __host__ __device__ scalar_t* hidden_before(int64_t s) const {
    return hidden + (s % 2) * n.B * n.P * n.M;
  }
  __host__ __device__ ForwardRowsParams<scalar_t, acc_t> rows(int64_t s) const {
    const int64_t rows = n.B * n.P, slot = training ? s : 0;
    const int64_t cell_prev = training ? s : s % 2, cell_next = training ? s + 1 : (s + 1) % 2;
    return {pre,
            bias_hh,
            gamma,
            beta,
            hidden_before(s),
            hidden_before(s + 1),
            cells + cell_prev * rows * n.M,
            cells + cell_next * rows * n.M,
            gates + slot * rows * 4 * n.M,
            q == nullptr ? nullptr : q + slot * rows * n.K,
            norm_hat == nullptr ? nullptr : norm_hat + slot * rows * 5 * n.M,
            norm_rstd == nullptr ? nullptr : norm_rstd + slot * rows * 5,
            output,
            state_hidden,
            state_cell,
            lengths,
            n,
            s};
  }
};

// Mean and 1/sqrt(var + eps) of the M values value(m), over a warp.
template <typename acc_t, typename Value>
__device__ inline void warp_moments(int64_t M, int lane, const Value& value, acc_t& mean,
                                    acc_t& rstd) {
  acc_t sum = 0;
  for (int64_t m = lane; m < M; m += 32) sum += value(m);
  mean = warp_all_sum(sum) / acc_t(M);
  acc_t sq = 0;
  for (int64_t m = lane; m < M; m += 32) {
    const acc_t d = value(m) - mean;
    sq += d * d;
  }
  rstd = acc_t(1) / ::sqrt(warp_all_sum(sq) / acc_t(M) + acc_t(kNormEps));
}

// Step p.s of one (b, p) row, by the 32 lanes of a warp.
template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ void tensorized_forward_row(const ForwardRowsParams<scalar_t, acc_t>& p, int64_t row,
                                       int lane) {
  const Sizes n = p.n;
  const int64_t M = n.M;
  const int64_t b = row / n.P, pr = row % n.P + 1;  // hidden row pr of 1..P
  const bool top = pr == n.P && p.s >= n.delay;
  scalar_t* y = top ? p.output + ((p.s - n.delay) * n.B + b) * M : nullptr;
  scalar_t* h_out = p.hidden_next + row * M;
  acc_t* c_out = p.cells_next + row * M;
  if (p.s >= sequence_length(p.lengths, b, n.T) + n.delay) {  // finished: the state stays
    for (int64_t m = lane; m < M; m += 32) {
      h_out[m] = p.hidden_prev[row * M + m];
      c_out[m] = p.cells_prev[row * M + m];
      if (top) y[m] = scalar_t(0);
      for (int g = 0; g < 4; ++g) p.gates[row * 4 * M + g * M + m] = scalar_t(0);
      if (kNorm) {
        for (int g = 0; g < 5; ++g) p.norm_hat[(row * 5 + g) * M + m] = acc_t(0);
      }
    }
    if (kMemoryConv) {
      for (int64_t k = lane; k < n.K; k += 32) p.q[row * n.K + k] = scalar_t(0);
    }
    if (kNorm && lane < 5) p.norm_rstd[row * 5 + lane] = acc_t(0);
    return;
  }
  const scalar_t* a = p.pre + row * n.G;
  scalar_t* g_out = p.gates + row * 4 * M;
  for (int g = 0; g < 4; ++g) {  // i, f, g, o
    auto z = [&](int64_t m) { return acc_t(a[g * M + m]) + acc_t(p.bias[g * M + m]); };
    acc_t mean = 0, rstd = 1;
    if (kNorm) {
      warp_moments<acc_t>(M, lane, z, mean, rstd);
      if (lane == 0) p.norm_rstd[row * 5 + g] = rstd;
    }
    for (int64_t m = lane; m < M; m += 32) {
      acc_t u = z(m);
      if (kNorm) {
        const acc_t zh = (u - mean) * rstd;
        p.norm_hat[(row * 5 + g) * M + m] = zh;
        u = acc_t(p.gamma[g * M + m]) * zh + acc_t(p.beta[g * M + m]);
      }
      g_out[g * M + m] = scalar_t(g == 2 ? tanh_(u) : sigmoid(u));
    }
  }
  // Q = softmax of the K logits, computed by every lane (K is small) and rounded to the
  // saved dtype, so that the backward's Q is the forward's; then the memory convolution.
  const acc_t* c_prev = p.cells_prev + (b * n.P) * M;
  acc_t qk[kMaxKernelSize];
  if (kMemoryConv) {
    acc_t top_logit = -INFINITY, total = 0;
    for (int64_t k = 0; k < n.K; ++k) {
      qk[k] = acc_t(a[4 * M + k]) + acc_t(p.bias[4 * M + k]);
      top_logit = max(top_logit, qk[k]);
    }
    for (int64_t k = 0; k < n.K; ++k) total += (qk[k] = exp_(qk[k] - top_logit));
    for (int64_t k = 0; k < n.K; ++k) qk[k] = acc_t(scalar_t(qk[k] / total));
    for (int64_t k = lane; k < n.K; k += 32) p.q[row * n.K + k] = scalar_t(qk[k]);
  }
  for (int64_t m = lane; m < M; m += 32) {
    acc_t cconv = 0;
    if (kMemoryConv) {
      for (int64_t k = 0; k < n.K; ++k) {
        cconv += qk[k] * c_prev[(clamp_row(pr - n.c + k, n.P) - 1) * M + m];
      }
    } else {
      cconv = c_prev[(pr - 1) * M + m];
    }
    c_out[m] = acc_t(g_out[2 * M + m]) * acc_t(g_out[m]) + cconv * acc_t(g_out[M + m]);
  }
  __syncwarp();
  acc_t mean = 0, rstd = 1;
  if (kNorm) {
    warp_moments<acc_t>(M, lane, [&](int64_t m) { return c_out[m]; }, mean, rstd);
    if (lane == 0) p.norm_rstd[row * 5 + 4] = rstd;
  }
  for (int64_t m = lane; m < M; m += 32) {
    acc_t u = c_out[m];
    if (kNorm) {
      const acc_t zh = (u - mean) * rstd;
      p.norm_hat[(row * 5 + 4) * M + m] = zh;
      u = acc_t(p.gamma[4 * M + m]) * zh + acc_t(p.beta[4 * M + m]);
    }
    const scalar_t h = scalar_t(tanh_(u) * acc_t(g_out[3 * M + m]));
    h_out[m] = h;
    if (top) y[m] = h;
    if (last_input_step(p.lengths, b, n.T, p.s)) {
      p.state_hidden[row * M + m] = h;
      p.state_cell[row * M + m] = c_out[m];
    }
  }
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_forward_rows_kernel(ForwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.P, [&](int64_t row, int lane) {
    tensorized_forward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

// ---- backward rows -----------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
struct BackwardRowsParams {
  const scalar_t* gates;       // [B*P, 4M]
  const scalar_t* q;           // [B*P, K]
  const acc_t* norm_hat;       // [B*P, 5, M]
  const acc_t* norm_rstd;      // [B*P, 5]
  const scalar_t* gamma;       // [5, M]
  const scalar_t* beta;        // [5, M]
  const acc_t* cells_prev;     // [B*P, M]
  const acc_t* cells;          // [B*P, M]
  const acc_t* grad_hidden;    // [B*P, M] dL/dH_s from later steps
  const acc_t* grad_cell;      // [B*P, M] dL/dC_s from later steps
  const scalar_t* grad_output; // [T, B, M]
  const acc_t* grad_state_hidden;  // [B*P, M] dL/dH_n, entering at the last input step
  const acc_t* grad_state_cell;    // [B*P, M] dL/dC_n
  scalar_t* grad_pre;          // [B*P, G] out
  acc_t* grad_cconv;           // [B*P, M] out
  acc_t* grad_norm;            // [B*P, 10, M] accumulated
  acc_t* scratch;              // [B*P, 3, M]: dL/dC, Cconv, dL/dO of the row
  const int64_t* lengths;
  Sizes n;
  int64_t s;
};

template <typename scalar_t, typename acc_t>
struct GatherParams {
  const scalar_t* grad_col;     // [B, P, K', M]
  const acc_t* grad_cconv;      // [B, P, M]
  const scalar_t* q;            // [B, P, K]
  const acc_t* grad_hidden;     // [B, P, M] dL/dH_s
  const acc_t* grad_cell;       // [B, P, M] dL/dC_s
  acc_t* grad_hidden_prev;      // [B, P, M] out
  acc_t* grad_cell_prev;        // [B, P, M] out
  scalar_t* grad_input_row;     // [B, M] out
  const int64_t* lengths;
  Sizes n;
  int64_t s;
};

// The backward buffers of a call (TensorizedBackwardBuffers' pointers) and the slots of step s
// in them. dL/dCconv has one slot (cconv_stride 0) for the step kernels and two, by the step's
// parity, for the persistent kernel, whose gather of step s+1 runs beside the rows of step s.
template <typename scalar_t, typename acc_t>
struct BackwardSequence {
  const scalar_t* gates;       // [S, B*P, 4M]
  const scalar_t* q;           // [S, B*P, K] or null
  const acc_t* norm_hat;       // [S, B*P, 5, M] or null
  const acc_t* norm_rstd;      // [S, B*P, 5] or null
  const scalar_t* gamma;       // [5, M] or null
  const scalar_t* beta;        // [5, M] or null
  const acc_t* cells;          // [S+1, B*P, M]
  acc_t* grad_hidden;          // [2, B*P, M]
  acc_t* grad_cell;            // [2, B*P, M]
  const scalar_t* grad_output; // [T, B, M]
  const acc_t* grad_state_hidden;  // [B*P, M]
  const acc_t* grad_state_cell;    // [B*P, M]
  scalar_t* grad_pre;          // [S, B*P, G]
  acc_t* grad_cconv;           // [1 or 2, B*P, M]
  int64_t cconv_stride;        // 0, or B*P*M
  acc_t* grad_norm;            // [B*P, 10, M] or null
  acc_t* scratch;              // [B*P, 3, M]
  scalar_t* grad_col;          // [B*P, K', M]
  scalar_t* grad_input_row;    // [S, B, M]
  const int64_t* lengths;      // [B] or null
  Sizes n;

  __host__ __device__ acc_t* grad_cconv_of(int64_t s) const {
    return grad_cconv + (s % 2) * cconv_stride;
  }
  // rows of step s: from dL/dH_s, dL/dC_s in slot cur
  __host__ __device__ BackwardRowsParams<scalar_t, acc_t> rows(int64_t s, int64_t cur) const {
    const int64_t rows = n.B * n.P;
    return {gates + s * rows * 4 * n.M,
            q == nullptr ? nullptr : q + s * rows * n.K,
            norm_hat == nullptr ? nullptr : norm_hat + s * rows * 5 * n.M,
            norm_rstd == nullptr ? nullptr : norm_rstd + s * rows * 5,
            gamma,
            beta,
            cells + s * rows * n.M,
            cells + (s + 1) * rows * n.M,
            grad_hidden + cur * rows * n.M,
            grad_cell + cur * rows * n.M,
            grad_output,
            grad_state_hidden,
            grad_state_cell,
            grad_pre + s * rows * n.G,
            grad_cconv_of(s),
            grad_norm,
            scratch,
            lengths,
            n,
            s};
  }
  // gather of step s: slot cur to slot 1 - cur
  __host__ __device__ GatherParams<scalar_t, acc_t> gather(int64_t s, int64_t cur) const {
    const int64_t rows = n.B * n.P;
    return {grad_col,
            grad_cconv_of(s),
            q == nullptr ? nullptr : q + s * rows * n.K,
            grad_hidden + cur * rows * n.M,
            grad_cell + cur * rows * n.M,
            grad_hidden + (1 - cur) * rows * n.M,
            grad_cell + (1 - cur) * rows * n.M,
            grad_input_row + s * n.B * n.M,
            lengths,
            n,
            s};
  }
};

// Step p.s of one (b, p) row backward, by the 32 lanes of a warp.
template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__device__ void tensorized_backward_row(const BackwardRowsParams<scalar_t, acc_t>& p,
                                        int64_t row, int lane) {
  const Sizes n = p.n;
  const int64_t M = n.M;
  const int64_t b = row / n.P, pr = row % n.P + 1;
  scalar_t* da = p.grad_pre + row * n.G;
  if (p.s >= sequence_length(p.lengths, b, n.T) + n.delay) {  // finished: nothing reaches A
    for (int64_t o = lane; o < n.G; o += 32) da[o] = scalar_t(0);
    return;
  }
  const scalar_t* g = p.gates + row * 4 * M;
  const scalar_t* go = (pr == n.P && p.s >= n.delay)
                           ? p.grad_output + ((p.s - n.delay) * n.B + b) * M
                           : nullptr;
  acc_t* d_c = p.scratch + (row * 3 + 0) * M;
  acc_t* cconv = p.scratch + (row * 3 + 1) * M;
  acc_t* d_o = p.scratch + (row * 3 + 2) * M;
  const acc_t* zh_c = kNorm ? p.norm_hat + (row * 5 + 4) * M : nullptr;
  const bool returned = last_input_step(p.lengths, b, n.T, p.s);  // dL/dH_n, dL/dC_n enter
  // H = tanh(u) O with u = CN_c(C): dL/dO, and dL/du into d_c for now.
  acc_t s1 = 0, s2 = 0;
  for (int64_t m = lane; m < M; m += 32) {
    const acc_t dh = p.grad_hidden[row * M + m] +
                     (returned ? p.grad_state_hidden[row * M + m] : acc_t(0)) +
                     (go ? acc_t(go[m]) : acc_t(0));
    const acc_t u = kNorm ? acc_t(p.gamma[4 * M + m]) * zh_c[m] + acc_t(p.beta[4 * M + m])
                          : p.cells[row * M + m];
    const acc_t tu = tanh_(u);
    d_o[m] = dh * tu;
    const acc_t du = dh * acc_t(g[3 * M + m]) * (acc_t(1) - tu * tu);
    d_c[m] = du;
    if (kNorm) {
      p.grad_norm[(row * 10 + 4) * M + m] += du * zh_c[m];
      p.grad_norm[(row * 10 + 9) * M + m] += du;
      const acc_t dzh = du * acc_t(p.gamma[4 * M + m]);
      s1 += dzh;
      s2 += dzh * zh_c[m];
    }
  }
  if (kNorm) {
    s1 = warp_all_sum(s1) / acc_t(M);
    s2 = warp_all_sum(s2) / acc_t(M);
  }
  // dL/dC; the memory convolution's input and dL/dQ.
  const acc_t* c_prev = p.cells_prev + (b * n.P) * M;
  const scalar_t* qr = kMemoryConv ? p.q + row * n.K : nullptr;
  acc_t dq[kMaxKernelSize];  // dL/dQ_k, summed per lane, then over the warp
  for (int64_t k = 0; k < n.K; ++k) dq[k] = 0;
  for (int64_t m = lane; m < M; m += 32) {
    acc_t dc = p.grad_cell[row * M + m] + (returned ? p.grad_state_cell[row * M + m] : acc_t(0));
    if (kNorm) {
      const acc_t rstd = p.norm_rstd[row * 5 + 4];
      dc += rstd * (d_c[m] * acc_t(p.gamma[4 * M + m]) - s1 - zh_c[m] * s2);
    } else {
      dc += d_c[m];
    }
    d_c[m] = dc;
    acc_t cc = 0;
    if (kMemoryConv) {
      for (int64_t k = 0; k < n.K; ++k) {
        cc += acc_t(qr[k]) * c_prev[(clamp_row(pr - n.c + k, n.P) - 1) * M + m];
      }
    } else {
      cc = c_prev[(pr - 1) * M + m];
    }
    cconv[m] = cc;
    const acc_t dcc = dc * acc_t(g[M + m]);
    p.grad_cconv[row * M + m] = dcc;
    if (kMemoryConv) {
      for (int64_t k = 0; k < n.K; ++k) {
        dq[k] += dcc * c_prev[(clamp_row(pr - n.c + k, n.P) - 1) * M + m];
      }
    }
  }
  if (kMemoryConv) {  // through the softmax: dA^q_k = Q_k (dQ_k - sum_j Q_j dQ_j)
    acc_t weighted = 0;
    for (int64_t k = 0; k < n.K; ++k) {
      dq[k] = warp_all_sum(dq[k]);
      weighted += acc_t(qr[k]) * dq[k];
    }
    for (int64_t k = lane; k < n.K; k += 32) {
      da[4 * M + k] = scalar_t(acc_t(qr[k]) * (dq[k] - weighted));
    }
  }
  __syncwarp();
  // The four gates: dL/d(activation input), then back through their channel norms.
  for (int gi = 0; gi < 4; ++gi) {
    auto dv = [&](int64_t m) -> acc_t {
      const acc_t y = acc_t(g[gi * M + m]);
      switch (gi) {
        case 0: return d_c[m] * acc_t(g[2 * M + m]) * y * (acc_t(1) - y);  // i
        case 1: return d_c[m] * cconv[m] * y * (acc_t(1) - y);            // f
        case 2: return d_c[m] * acc_t(g[m]) * (acc_t(1) - y * y);         // g
        default: return d_o[m] * y * (acc_t(1) - y);                      // o
      }
    };
    if (!kNorm) {
      for (int64_t m = lane; m < M; m += 32) da[gi * M + m] = scalar_t(dv(m));
      continue;
    }
    const acc_t* zh = p.norm_hat + (row * 5 + gi) * M;
    acc_t t1 = 0, t2 = 0;
    for (int64_t m = lane; m < M; m += 32) {
      const acc_t d = dv(m);
      p.grad_norm[(row * 10 + gi) * M + m] += d * zh[m];
      p.grad_norm[(row * 10 + 5 + gi) * M + m] += d;
      const acc_t dzh = d * acc_t(p.gamma[gi * M + m]);
      t1 += dzh;
      t2 += dzh * zh[m];
    }
    t1 = warp_all_sum(t1) / acc_t(M);
    t2 = warp_all_sum(t2) / acc_t(M);
    const acc_t rstd = p.norm_rstd[row * 5 + gi];
    for (int64_t m = lane; m < M; m += 32) {
      da[gi * M + m] = scalar_t(rstd * (dv(m) * acc_t(p.gamma[gi * M + m]) - t1 - zh[m] * t2));
    }
  }
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kThreads)
    tensorized_backward_rows_kernel(BackwardRowsParams<scalar_t, acc_t> p) {
  for_each_warp_row(p.n.B * p.n.P, [&](int64_t row, int lane) {
    tensorized_backward_row<scalar_t, acc_t, kNorm, kMemoryConv>(p, row, lane);
  });
}

// ---- gather ------------------------------------------------------------------------------

// Channel m of row r (0: the input row) of batch element b: dL/dH_{s-1} and dL/dC_{s-1}, or
// dL/d(input row of step s).
template <typename scalar_t, typename acc_t, bool kMemoryConv>
__device__ inline void tensorized_gather_element(const GatherParams<scalar_t, acc_t>& p,
                                                 int64_t b, int64_t r, int64_t m) {
  const Sizes& n = p.n;
  const bool running = p.s < sequence_length(p.lengths, b, n.T) + n.delay;
  const int64_t state = (b * n.P + r - 1) * n.M + m;  // row r of the state tensors (r >= 1)
  if (!running) {  // finished: dL/dH and dL/dC pass through, the input row gets nothing
    if (r == 0) {
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
  const Sizes n = p.n;
  const int64_t total = n.B * (n.P + 1) * n.M;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx % n.M, item = idx / n.M;
    tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, item / (n.P + 1), item % (n.P + 1),
                                                             m);
  }
}

// ---- persistent kernels: the whole recurrence in one cooperative launch --------------------
//
// For small B*P a step's three launches (im2col, GEMM, rows) cost more host time than the GPU
// spends on them (measured on an H100: 41-48 us a step at every depth). Here one launch runs
// every step. The step GEMM is split by its output columns over the blocks, each keeping its
// columns of W_col in shared memory for the whole sequence (block_recurrent_matmul,
// block_matmul.cuh); a grid-wide barrier; then a warp per (b, p) row runs the same row code as
// the step kernels, which needs a whole row of A (the channel norms, the softmax over K) and
// the neighbours' cells; a second barrier ends the step. The forward's rows also scatter their
// new hidden row into next step's X_col (each element of it has one writer: the hidden row it
// copies, or the row whose tap reads the input row or no row), so im2col needs no phase of its
// own. The backward's phases: the gather of step s+1 and the rows of step s (a warp per row:
// the gather of a row is all the rows pass of that row needs), then dX_col = dA W_col^T split by
// the columns of X_col. Two barriers a step either way.

// Row (b, p) of H_s, just written, copied into X_col of step s+1 wherever a tap reads it; and
// that row's own taps that read the input row or no row.
template <typename scalar_t, typename acc_t>
__device__ void scatter_hidden_row(const ForwardSequence<scalar_t, acc_t>& seq, int64_t s_next,
                                   int64_t row, int lane) {
  const Sizes& n = seq.n;
  const int64_t b = row / n.P, p = row % n.P + 1;
  scalar_t* x = seq.x_col_of(s_next);
  const scalar_t* h = seq.hidden_before(s_next) + row * n.M;
  for (int64_t k = 0; k < n.taps; ++k) {
    const int64_t reader = p + n.c - k;  // tap k of row `reader` reads row p
    if (reader >= 1 && reader <= n.P) {
      scalar_t* dst = x + ((b * n.P + reader - 1) * n.taps + k) * n.M;
      for (int64_t m = lane; m < n.M; m += 32) dst[m] = h[m];
    }
    const int64_t r = p - n.c + k;  // row read by tap k of row p
    if (r < 1 || r > n.P) {
      scalar_t* dst = x + (row * n.taps + k) * n.M;
      for (int64_t m = lane; m < n.M; m += 32) {
        dst[m] = hcat_value<scalar_t>(nullptr, seq.input_proj, seq.bias_ih, seq.lengths, n,
                                      s_next, b, r, m);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
struct TensorizedPersistentForwardParams {
  ForwardSequence<scalar_t, acc_t> seq;
  const scalar_t* weight_col;  // [K'*M, G]
  int64_t units;               // output columns of A per block
  BlockMatmulShape shape;      // B*P x units x K'*M
};

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    tensorized_forward_persistent_kernel(TensorizedPersistentForwardParams<scalar_t, acc_t> p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const ForwardSequence<scalar_t, acc_t>& seq = p.seq;
  const Sizes n = seq.n;
  const int64_t rows = n.B * n.P, width = n.taps * n.M, w = p.units;
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
  // X_col of step 0
  scalar_t* x0 = seq.x_col_of(0);
  const scalar_t* h0 = seq.hidden_before(0);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < rows * width;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t mm = idx % n.M, k = (idx / n.M) % n.taps, row = idx / width;
    x0[idx] = hcat_value(h0, seq.input_proj, seq.bias_ih, seq.lengths, n, 0, row / n.P,
                         row % n.P + 1 - n.c + k, mm);
  }
  grid.sync();
  for (int64_t s = 0; s < n.S; ++s) {
    block_recurrent_matmul(seq.x_col_of(s), rows, shape, m);  // A's columns o0.. of step s
    for (int64_t e = threadIdx.x; e < rows * w; e += blockDim.x) {
      const int64_t row = e / w, r = e - row * w, o = o0 + r;
      if (o < n.G) seq.pre[row * n.G + o] = scalar_t(m.result(shape, row, r));
    }
    grid.sync();  // every column of A is written before a row reads it
    const auto rows_params = seq.rows(s);
    for_each_warp_row(rows, [&](int64_t row, int lane) {
      tensorized_forward_row<scalar_t, acc_t, kNorm, kMemoryConv>(rows_params, row, lane);
      if (s + 1 < n.S) {
        __syncwarp();
        scatter_hidden_row(seq, s + 1, row, lane);
      }
    });
    grid.sync();  // H_s, C_s and X_col of step s+1 are written before step s+1 reads them
  }
}

template <typename scalar_t, typename acc_t>
struct TensorizedPersistentBackwardParams {
  BackwardSequence<scalar_t, acc_t> seq;  // cconv_stride B*P*M
  const scalar_t* weight_col;  // [K'*M, G]
  int64_t units;               // columns of X_col per block
  BlockMatmulShape shape;      // B*P x units x G
};

// Gather of one (b, p) row by a warp; the warp of row p = 1 also gathers the input row.
template <typename scalar_t, typename acc_t, bool kMemoryConv>
__device__ void gather_row(const GatherParams<scalar_t, acc_t>& p, int64_t row, int lane) {
  const int64_t b = row / p.n.P, r = row % p.n.P + 1;
  for (int64_t m = lane; m < p.n.M; m += 32) {
    tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, b, r, m);
    if (r == 1) tensorized_gather_element<scalar_t, acc_t, kMemoryConv>(p, b, 0, m);
  }
}

template <typename scalar_t, typename acc_t, bool kNorm, bool kMemoryConv>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    tensorized_backward_persistent_kernel(TensorizedPersistentBackwardParams<scalar_t, acc_t> p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const BackwardSequence<scalar_t, acc_t>& seq = p.seq;
  const Sizes n = seq.n;
  const int64_t rows = n.B * n.P, width = n.taps * n.M, w = p.units;
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
      tensorized_backward_row<scalar_t, acc_t, kNorm, kMemoryConv>(rows_params, row, lane);
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

// ---- launches ----------------------------------------------------------------------------

Sizes device_sizes(const TensorizedSizes& n) {
  return {n.T, n.B, n.M, n.P, n.K, n.c, n.taps, n.G, n.S, n.delay};
}

template <class Fn>
void dispatch_dtype(at::ScalarType dtype, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "tlstm_tensorized_cuda",
                                  [&] { fn(scalar_t{}); });
}

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
ForwardSequence<scalar_t, acc_t> forward_sequence(const TensorizedForwardBuffers& buf) {
  return {buf.input_proj.data_ptr<scalar_t>(),
          buf.bias_ih.data_ptr<scalar_t>(),
          buf.bias_hh.data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(buf.norm_weight),
          ptr_or_null<scalar_t>(buf.norm_bias),
          buf.x_col.data_ptr<scalar_t>(),
          buf.pre.data_ptr<scalar_t>(),
          buf.hidden.data_ptr<scalar_t>(),
          buf.cells.data_ptr<acc_t>(),
          buf.gates.data_ptr<scalar_t>(),
          buf.n.memory_conv ? buf.q.data_ptr<scalar_t>() : nullptr,
          buf.n.channel_norm ? buf.norm_hat.data_ptr<acc_t>() : nullptr,
          buf.n.channel_norm ? buf.norm_rstd.data_ptr<acc_t>() : nullptr,
          buf.output.data_ptr<scalar_t>(),
          buf.state_hidden.data_ptr<scalar_t>(),
          buf.state_cell.data_ptr<acc_t>(),
          ptr_or_null<int64_t>(buf.lengths),
          device_sizes(buf.n),
          buf.training};
}

// grad_cconv: [B, P, M] for the step kernels, [2, B, P, M] for the persistent kernel.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
BackwardSequence<scalar_t, acc_t> backward_sequence(const TensorizedBackwardBuffers& buf,
                                                    const Tensor& grad_cconv) {
  const auto& n = buf.n;
  return {buf.gates.data_ptr<scalar_t>(),
          n.memory_conv ? buf.q.data_ptr<scalar_t>() : nullptr,
          n.channel_norm ? buf.norm_hat.data_ptr<acc_t>() : nullptr,
          n.channel_norm ? buf.norm_rstd.data_ptr<acc_t>() : nullptr,
          ptr_or_null<scalar_t>(buf.norm_weight),
          ptr_or_null<scalar_t>(buf.norm_bias),
          buf.cells.data_ptr<acc_t>(),
          buf.grad_hidden.data_ptr<acc_t>(),
          buf.grad_cell.data_ptr<acc_t>(),
          buf.grad_output.data_ptr<scalar_t>(),
          buf.grad_state_hidden.data_ptr<acc_t>(),
          buf.grad_state_cell.data_ptr<acc_t>(),
          buf.grad_pre.data_ptr<scalar_t>(),
          grad_cconv.data_ptr<acc_t>(),
          grad_cconv.dim() == 4 ? n.B * n.P * n.M : 0,
          ptr_or_null<acc_t>(buf.grad_norm_rows),
          buf.workspace.at(0).data_ptr<acc_t>(),
          buf.grad_col.data_ptr<scalar_t>(),
          buf.grad_input_row.data_ptr<scalar_t>(),
          ptr_or_null<int64_t>(buf.lengths),
          device_sizes(n)};
}

void im2col_cuda(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto& n = buf.n;
  const int64_t total = n.B * n.P * n.taps * n.M;
  if (total == 0) return;
  dispatch_dtype(buf.x_col.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    const auto seq = forward_sequence<scalar_t>(buf);
    tensorized_im2col_kernel<scalar_t>
        <<<blocks_for(total, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            seq.x_col_of(s), seq.hidden_before(s), seq.input_proj, seq.bias_ih, seq.lengths,
            seq.n, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void forward_rows_cuda(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto& n = buf.n;
  const int64_t rows = n.B * n.P;
  if (rows == 0) return;
  dispatch_dtype(buf.pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = forward_sequence<scalar_t>(buf).rows(s);
    dispatch_flags(n.channel_norm, n.memory_conv, [&](auto norm, auto memory_conv) {
      tensorized_forward_rows_kernel<scalar_t, acc_t, decltype(norm)::value,
                                     decltype(memory_conv)::value>
          <<<blocks_for(rows, kWarpsPerBlock), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void prepare_backward_cuda(TensorizedBackwardBuffers& buf) {
  const auto& n = buf.n;
  buf.workspace = {at::empty({n.B, n.P, 3, n.M}, buf.grad_cell.options())};
}

void backward_rows_cuda(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t rows = n.B * n.P;
  if (rows == 0) return;
  dispatch_dtype(buf.grad_pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).rows(s, cur);
    dispatch_flags(n.channel_norm, n.memory_conv, [&](auto norm, auto memory_conv) {
      tensorized_backward_rows_kernel<scalar_t, acc_t, decltype(norm)::value,
                                      decltype(memory_conv)::value>
          <<<blocks_for(rows, kWarpsPerBlock), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void gather_rows_cuda(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t total = n.B * (n.P + 1) * n.M;
  if (total == 0) return;
  dispatch_dtype(buf.grad_pre.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = backward_sequence<scalar_t>(buf, buf.grad_cconv).gather(s, cur);
    dispatch_flag(n.memory_conv, [&](auto memory_conv) {
      tensorized_gather_kernel<scalar_t, acc_t, decltype(memory_conv)::value>
          <<<blocks_for(total, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
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
  if (n.B == 0 || n.S == 0) return false;
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
          return TensorizedPersistentForwardParams<scalar_t, acc_t>{
              forward_sequence<scalar_t>(buf), weight.data_ptr<scalar_t>(), units, shape};
        });
  });
}

bool backward_sequence_cuda(const TensorizedBackwardBuffers& buf, const Tensor& weight_col) {
  const auto& n = buf.n;
  const Tensor weight = weight_col.contiguous();  // [K'*M, G]
  Tensor grad_cconv;  // alive until the launch is queued
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
          grad_cconv = at::empty({2, n.B, n.P, n.M}, buf.grad_cconv.options());
          return TensorizedPersistentBackwardParams<scalar_t, acc_t>{
              backward_sequence<scalar_t>(buf, grad_cconv), weight.data_ptr<scalar_t>(), units,
              shape};
        });
  });
}

// The step GEMMs' weight [K'*M, G] (forward) or [G, K'*M] (backward), multiplied with cuBLAS
// directly: at::mm_out's dispatch costs more host time than the rest of a step.
struct CublasRightOperand : RepeatedRightOperand {
  explicit CublasRightOperand(at::Tensor b) : b_(b.contiguous()) {}
  // out [m, N] = a [m, K] b, a and out contiguous
  void matmul_out(at::Tensor& out, const at::Tensor& a) const override {
    TORCH_INTERNAL_ASSERT(a.is_contiguous() && out.is_contiguous() && a.dim() == 2 &&
                          out.dim() == 2 && a.size(1) == b_.size(0) &&
                          out.size(0) == a.size(0) && out.size(1) == b_.size(1) &&
                          a.scalar_type() == b_.scalar_type() &&
                          out.scalar_type() == b_.scalar_type());
    dispatch_dtype(b_.scalar_type(), [&](auto scalar) {
      using scalar_t = decltype(scalar);
      gemm_row_major<scalar_t>(a.size(0), b_.size(1), a.size(1), a.data_ptr<scalar_t>(),
                               b_.data_ptr<scalar_t>(), 0.0, out.data_ptr<scalar_t>());
    });
  }
  at::Tensor b_;
};

std::unique_ptr<RepeatedRightOperand> prepare_right_operand_cuda(const at::Tensor& b) {
  return std::make_unique<CublasRightOperand>(b);
}

struct CudaBackend {
  static constexpr TensorizedStepKernels kernels{nullptr,           prepare_right_operand_cuda,
                                                 im2col_cuda,       forward_rows_cuda,
                                                 prepare_backward_cuda, backward_rows_cuda,
                                                 gather_rows_cuda,  forward_sequence_cuda,
                                                 backward_sequence_cuda};
  static void check_input(const char* op, const Tensor& input, int64_t kernel_size) {
    check_floating(op, input, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}, "CUDA");
    TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device, got ", input.device());
    TORCH_CHECK(kernel_size <= kMaxKernelSize, op, " on CUDA supports kernel_size up to ",
                kMaxKernelSize, ", got ", kernel_size);
  }
  using Guard = c10::cuda::CUDAGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CUDA, m) {
  m.impl("tensorized_lstm_forward", &tensorized_lstm_forward_op<CudaBackend>);
  m.impl("tensorized_lstm_backward", &tensorized_lstm_backward_op<CudaBackend>);
}

}  // namespace tlstm
