// CUDA backend of the peephole LSTM ops, plugged into the shared sequence driver
// (peephole_lstm.cpp), which runs the input projection and the weight gradients as cuBLAS
// GEMMs through ATen on the current stream.
//
// A step is the recurrent GEMM (cuBLAS called directly, cublas_gemm.cuh) and one fused
// element-wise kernel built from the same cell math as the CPU (peephole_lstm_cell.h). Inputs
// may be float32, float64, float16 or bfloat16; the cell state and all element-wise arithmetic
// are in the op-math type (float32 for the half types). Every index is 64-bit.
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
#include "../peephole_lstm.h"
#include "cublas_gemm.cuh"
#include "persistent_launch.cuh"

namespace tlstm {
namespace {

constexpr int kThreads = 256;

// Blocks of a grid-stride loop over n elements.
inline unsigned int blocks_for(int64_t n) {
  const int64_t max_blocks =
      int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, max_blocks)));
}

__device__ inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

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
      <<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H, buf.bias.data_ptr<scalar_t>(),
          buf.peephole.data_ptr<scalar_t>(),
          buf.cell_states.data_ptr<acc_t>() + step.prev * B * H,
          buf.cell_states.data_ptr<acc_t>() + step.next * B * H, hidden_prev, hidden_next,
          buf.output.data_ptr<scalar_t>() + step.t * B * R,
          kProjected ? buf.hidden_pre.data_ptr<scalar_t>() : nullptr, lengths, step.t, B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

template <typename scalar_t, class Act, bool kProjected, bool kPeephole>
void launch_backward_step(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.grad_output.size(2);
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;
  const auto stream = at::cuda::getCurrentCUDAStream();
  scalar_t* grad_gates_t = buf.grad_gates.data_ptr<scalar_t>() + step.t * B * 4 * H;
  if (B * H > 0) {
    peephole_backward_step_kernel<scalar_t, acc_t, Act, kProjected, kPeephole>
        <<<blocks_for(B * H), kThreads, 0, stream>>>(
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
    carry_inactive_rows_kernel<scalar_t><<<blocks_for(B * R), kThreads, 0, stream>>>(
        buf.grad_hidden_next.data_ptr<scalar_t>(), buf.grad_hidden.data_ptr<scalar_t>(), lengths,
        step.t, B, R);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}


// ---- persistent kernels: the whole recurrence in one cooperative launch --------------------
//
// For small batches a step is too little work for a GEMM launch and a kernel launch. Here one
// launch runs every step: block k owns the hidden units [k*w, (k+1)*w) and keeps the W_hh
// rows (forward) or columns (backward) of its units in shared memory for the whole sequence.
// A step's recurrent term is a small matrix product inside the block (block_recurrent_matmul,
// block_matmul.cuh), whose other operand (h_{t-1} forward, dL/da_t backward) is staged from
// global memory. The cells of the block's units follow, and one grid-wide barrier ends the
// step. Only without a projection (R = H); the same saved buffers as the steps.

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
  extern __shared__ __align__(16) unsigned char shared[];
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
  extern __shared__ __align__(16) unsigned char shared[];
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
                             buf.gates.data_ptr<scalar_t>() + step.t * B * H4);
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
  static constexpr PeepholeStepKernels kernels{nullptr,           nullptr,
                                               forward_step_cuda, nullptr,
                                               backward_step_cuda, forward_sequence_cuda,
                                               backward_sequence_cuda};
  static void check_input(const char* op, const Tensor& input) { check_cuda_input(op, input); }
  using Guard = c10::cuda::CUDAGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CUDA, m) {
  m.impl("peephole_lstm_forward", &peephole_lstm_forward_op<CudaBackend>);
  m.impl("peephole_lstm_backward", &peephole_lstm_backward_op<CudaBackend>);
}

}  // namespace tlstm
