// CPU backend of the tensorized LSTM ops: the four row passes of a step (tensorized_lstm.h),
// each parallel over the B*P rows (or B*(P+1) for the gather) of the step.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "cpu_matmul.h"
#include "../fast_math.h"
#include "../peephole_lstm.h"  // NoDeviceGuard
#include "../tensorized_lstm.h"

namespace tlstm {
namespace {

constexpr double kNormEps = 1e-5;

// Rows of one task: enough elements per task that a thread's start-up cost is small.
int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(row_elements, 1));
}

// Step s of sequence b runs while s < length_b + delay; its input row is real while s < length_b.
inline int64_t sequence_length(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : std::min(lengths[b], T);
}

// Step s is the last that reads an input of sequence b: the returned state is the one after it.
inline bool last_input_step(const int64_t* lengths, int64_t b, int64_t T, int64_t s) {
  return s + 1 == sequence_length(lengths, b, T);
}

// z [M] -> zh = (z - mean) / sqrt(var + eps) (biased variance); returns 1/sqrt(var + eps).
template <typename T>
T normalize(const T* z, T* zh, int64_t M) {
  T mean = 0;
  for (int64_t m = 0; m < M; ++m) mean += z[m];
  mean /= T(M);
  T var = 0;
  for (int64_t m = 0; m < M; ++m) var += (z[m] - mean) * (z[m] - mean);
  var /= T(M);
  const T rstd = T(1) / std::sqrt(var + T(kNormEps));
  for (int64_t m = 0; m < M; ++m) zh[m] = (z[m] - mean) * rstd;
  return rstd;
}

// Backward of zh = normalize(z) given dL/dzh: dz = rstd (dzh - mean(dzh) - zh mean(dzh zh)).
template <typename T>
void normalize_backward(const T* dzh, const T* zh, T rstd, T* dz, int64_t M) {
  T mean_d = 0, mean_dz = 0;
  for (int64_t m = 0; m < M; ++m) {
    mean_d += dzh[m];
    mean_dz += dzh[m] * zh[m];
  }
  mean_d /= T(M);
  mean_dz /= T(M);
  for (int64_t m = 0; m < M; ++m) dz[m] = rstd * (dzh[m] - mean_d - zh[m] * mean_dz);
}

// Cconv [M] of hidden row p: sum_k Q_k C_{t-1, clamp(p-c+k, 1, P)} (replicate padding), or
// C_{t-1, p} without the memory convolution. c_prev: rows 1..P of the sequence [P, M].
template <typename scalar_t, bool kMemoryConv>
void memory_convolution(const scalar_t* c_prev, const scalar_t* q, int64_t p,
                        const TensorizedSizes& n, scalar_t* cconv) {
  const int64_t M = n.M;
  if (!kMemoryConv) {
    std::copy_n(c_prev + (p - 1) * M, M, cconv);
    return;
  }
  std::fill_n(cconv, M, scalar_t(0));
  for (int64_t k = 0; k < n.K; ++k) {
    const scalar_t* src = c_prev + (std::clamp<int64_t>(p - n.c + k, 1, n.P) - 1) * M;
    for (int64_t m = 0; m < M; ++m) cconv[m] += q[k] * src[m];
  }
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

// ---- forward rows ------------------------------------------------------------------------

template <typename scalar_t, bool kNorm, bool kMemoryConv>
void forward_rows_kernel(const TensorizedForwardBuffers& buf, int64_t s) {
  const auto& n = buf.n;
  const int64_t M = n.M, G = n.G, P = n.P, slot = buf.training ? s : 0;
  const int64_t rows = n.B * P;
  const scalar_t* pre = buf.pre.data_ptr<scalar_t>();                                   // [B*P, G]
  const scalar_t* bias = buf.bias_hh.data_ptr<scalar_t>();                              // [G]
  const scalar_t* gamma = kNorm ? buf.norm_weight.data_ptr<scalar_t>() : nullptr;       // [5, M]
  const scalar_t* beta = kNorm ? buf.norm_bias.data_ptr<scalar_t>() : nullptr;          // [5, M]
  const scalar_t* hidden_prev = buf.hidden.data_ptr<scalar_t>() + (s % 2) * rows * M;
  scalar_t* hidden_next = buf.hidden.data_ptr<scalar_t>() + ((s + 1) % 2) * rows * M;
  const int64_t cell_prev_slot = buf.training ? s : s % 2;
  const int64_t cell_next_slot = buf.training ? s + 1 : (s + 1) % 2;
  const scalar_t* cells_prev = buf.cells.data_ptr<scalar_t>() + cell_prev_slot * rows * M;
  scalar_t* cells_next = buf.cells.data_ptr<scalar_t>() + cell_next_slot * rows * M;
  scalar_t* gates = buf.gates.data_ptr<scalar_t>() + slot * rows * 4 * M;              // [B*P, 4M]
  scalar_t* q = kMemoryConv ? buf.q.data_ptr<scalar_t>() + slot * rows * n.K : nullptr;
  scalar_t* norm_hat = kNorm ? buf.norm_hat.data_ptr<scalar_t>() + slot * rows * 5 * M : nullptr;
  scalar_t* norm_rstd = kNorm ? buf.norm_rstd.data_ptr<scalar_t>() + slot * rows * 5 : nullptr;
  scalar_t* output = buf.output.data_ptr<scalar_t>();                                   // [T, B, M]
  scalar_t* state_hidden = buf.state_hidden.data_ptr<scalar_t>();                       // [B*P, M]
  scalar_t* state_cell = buf.state_cell.data_ptr<scalar_t>();                           // [B*P, M]
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  at::parallel_for(0, rows, rows_per_task(G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> z(M), zh(M), cconv(M);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / P, p = row % P + 1;
      const bool top = p == P && s >= n.delay;
      scalar_t* h_out = hidden_next + row * M;
      scalar_t* c_out = cells_next + row * M;
      scalar_t* y = top ? output + ((s - n.delay) * n.B + b) * M : nullptr;
      if (s >= sequence_length(lengths, b, n.T) + n.delay) {  // finished: the state stays
        std::copy_n(hidden_prev + row * M, M, h_out);
        std::copy_n(cells_prev + row * M, M, c_out);
        if (top) std::fill_n(y, M, scalar_t(0));
        // the saved slots are never read for this row; zeros keep the op's outputs defined
        std::fill_n(gates + row * 4 * M, 4 * M, scalar_t(0));
        if (kMemoryConv) std::fill_n(q + row * n.K, n.K, scalar_t(0));
        if (kNorm) {
          std::fill_n(norm_hat + row * 5 * M, 5 * M, scalar_t(0));
          std::fill_n(norm_rstd + row * 5, 5, scalar_t(0));
        }
        continue;
      }
      const scalar_t* a = pre + row * G;
      scalar_t* g_out = gates + row * 4 * M;
      for (int64_t g = 0; g < 4; ++g) {  // i, f, g, o
        for (int64_t m = 0; m < M; ++m) z[m] = a[g * M + m] + bias[g * M + m];
        if (kNorm) {
          scalar_t* zh_save = norm_hat + (row * 5 + g) * M;
          norm_rstd[row * 5 + g] = normalize(z.data(), zh_save, M);
          for (int64_t m = 0; m < M; ++m) z[m] = gamma[g * M + m] * zh_save[m] + beta[g * M + m];
        }
        scalar_t* out = g_out + g * M;
        if (g == 2) {
          for (int64_t m = 0; m < M; ++m) out[m] = tanh_(z[m]);
        } else {
          for (int64_t m = 0; m < M; ++m) out[m] = sigmoid(z[m]);
        }
      }
      const scalar_t* c_prev = cells_prev + (b * P) * M;  // rows 1..P of this sequence
      scalar_t* qr = kMemoryConv ? q + row * n.K : nullptr;
      if (kMemoryConv) {  // Q = softmax of the K kernel logits
        scalar_t top_logit = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t k = 0; k < n.K; ++k) {
          qr[k] = a[4 * M + k] + bias[4 * M + k];
          top_logit = std::max(top_logit, qr[k]);
        }
        scalar_t total = 0;
        for (int64_t k = 0; k < n.K; ++k) total += (qr[k] = exp_(qr[k] - top_logit));
        for (int64_t k = 0; k < n.K; ++k) qr[k] /= total;
      }
      memory_convolution<scalar_t, kMemoryConv>(c_prev, qr, p, n, cconv.data());
      const scalar_t *i_g = g_out, *f_g = g_out + M, *g_g = g_out + 2 * M, *o_g = g_out + 3 * M;
      for (int64_t m = 0; m < M; ++m) c_out[m] = g_g[m] * i_g[m] + cconv[m] * f_g[m];
      const scalar_t* u = c_out;
      if (kNorm) {
        scalar_t* zh_save = norm_hat + (row * 5 + 4) * M;
        norm_rstd[row * 5 + 4] = normalize(c_out, zh_save, M);
        for (int64_t m = 0; m < M; ++m) zh[m] = gamma[4 * M + m] * zh_save[m] + beta[4 * M + m];
        u = zh.data();
      }
      for (int64_t m = 0; m < M; ++m) h_out[m] = tanh_(u[m]) * o_g[m];
      if (top) std::copy_n(h_out, M, y);
      if (last_input_step(lengths, b, n.T, s)) {
        std::copy_n(h_out, M, state_hidden + row * M);
        std::copy_n(c_out, M, state_cell + row * M);
      }
    }
  });
}

// ---- backward rows -----------------------------------------------------------------------

template <typename scalar_t, bool kNorm, bool kMemoryConv>
void backward_rows_kernel(const TensorizedBackwardBuffers& buf, int64_t s, int64_t cur) {
  const auto& n = buf.n;
  const int64_t M = n.M, G = n.G, P = n.P, rows = n.B * P;
  const scalar_t* gates = buf.gates.data_ptr<scalar_t>() + s * rows * 4 * M;
  const scalar_t* q = kMemoryConv ? buf.q.data_ptr<scalar_t>() + s * rows * n.K : nullptr;
  const scalar_t* norm_hat = kNorm ? buf.norm_hat.data_ptr<scalar_t>() + s * rows * 5 * M : nullptr;
  const scalar_t* norm_rstd = kNorm ? buf.norm_rstd.data_ptr<scalar_t>() + s * rows * 5 : nullptr;
  const scalar_t* gamma = kNorm ? buf.norm_weight.data_ptr<scalar_t>() : nullptr;
  const scalar_t* beta = kNorm ? buf.norm_bias.data_ptr<scalar_t>() : nullptr;
  const scalar_t* cells_prev = buf.cells.data_ptr<scalar_t>() + s * rows * M;
  const scalar_t* cells = buf.cells.data_ptr<scalar_t>() + (s + 1) * rows * M;
  const scalar_t* grad_hidden = buf.grad_hidden.data_ptr<scalar_t>() + cur * rows * M;
  const scalar_t* grad_cell = buf.grad_cell.data_ptr<scalar_t>() + cur * rows * M;
  const scalar_t* grad_output = buf.grad_output.data_ptr<scalar_t>();
  const scalar_t* grad_state_hidden = buf.grad_state_hidden.data_ptr<scalar_t>();  // [B*P, M]
  const scalar_t* grad_state_cell = buf.grad_state_cell.data_ptr<scalar_t>();      // [B*P, M]
  scalar_t* grad_pre = buf.grad_pre.data_ptr<scalar_t>() + s * rows * G;
  scalar_t* grad_cconv = buf.grad_cconv.data_ptr<scalar_t>();
  scalar_t* grad_norm = kNorm ? buf.grad_norm_rows.data_ptr<scalar_t>() : nullptr;  // [B*P, 10, M]
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  at::parallel_for(0, rows, rows_per_task(G), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> dh(M), d_o(M), du(M), dc(M), cconv(M), dv(M), dz(M), dq(n.K);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / P, p = row % P + 1;
      scalar_t* da = grad_pre + row * G;
      if (s >= sequence_length(lengths, b, n.T) + n.delay) {  // finished: nothing reaches A
        std::fill_n(da, G, scalar_t(0));
        continue;
      }
      const bool returned = last_input_step(lengths, b, n.T, s);  // dL/dH_n, dL/dC_n enter
      for (int64_t m = 0; m < M; ++m) {
        dh[m] = grad_hidden[row * M + m] + (returned ? grad_state_hidden[row * M + m] : 0);
      }
      if (p == P && s >= n.delay) {  // the top row is the output of step s - delay
        const scalar_t* go = grad_output + ((s - n.delay) * n.B + b) * M;
        for (int64_t m = 0; m < M; ++m) dh[m] += go[m];
      }
      const scalar_t* g = gates + row * 4 * M;
      const scalar_t *i_g = g, *f_g = g + M, *g_g = g + 2 * M, *o_g = g + 3 * M;
      const scalar_t* c = cells + row * M;
      // H = tanh(u) O, u = CN_c(C) = gamma_c zh_c + beta_c (or C)
      const scalar_t* zh_c = kNorm ? norm_hat + (row * 5 + 4) * M : nullptr;
      for (int64_t m = 0; m < M; ++m) {
        const scalar_t u = kNorm ? gamma[4 * M + m] * zh_c[m] + beta[4 * M + m] : c[m];
        const scalar_t tu = tanh_(u);
        d_o[m] = dh[m] * tu;
        du[m] = dh[m] * o_g[m] * (scalar_t(1) - tu * tu);
      }
      if (kNorm) {
        scalar_t* dgamma = grad_norm + (row * 10 + 4) * M;
        scalar_t* dbeta = grad_norm + (row * 10 + 9) * M;
        for (int64_t m = 0; m < M; ++m) {
          dgamma[m] += du[m] * zh_c[m];
          dbeta[m] += du[m];
          du[m] *= gamma[4 * M + m];
        }
        normalize_backward(du.data(), zh_c, norm_rstd[row * 5 + 4], dz.data(), M);
      } else {
        std::copy_n(du.data(), M, dz.data());
      }
      for (int64_t m = 0; m < M; ++m) {
        dc[m] = grad_cell[row * M + m] + (returned ? grad_state_cell[row * M + m] : 0) + dz[m];
      }
      const scalar_t* c_prev = cells_prev + (b * P) * M;
      const scalar_t* qr = kMemoryConv ? q + row * n.K : nullptr;
      memory_convolution<scalar_t, kMemoryConv>(c_prev, qr, p, n, cconv.data());
      // C = G I + Cconv F
      scalar_t* dcconv = grad_cconv + row * M;
      for (int64_t m = 0; m < M; ++m) dcconv[m] = dc[m] * f_g[m];
      if (kMemoryConv) {  // dL/dQ_k = dCconv . C_{t-1, row of tap k}; then through the softmax
        scalar_t weighted = 0;
        for (int64_t k = 0; k < n.K; ++k) {
          const scalar_t* src = c_prev + (std::clamp<int64_t>(p - n.c + k, 1, P) - 1) * M;
          scalar_t acc = 0;
          for (int64_t m = 0; m < M; ++m) acc += dcconv[m] * src[m];
          dq[k] = acc;
          weighted += qr[k] * acc;
        }
        for (int64_t k = 0; k < n.K; ++k) da[4 * M + k] = qr[k] * (dq[k] - weighted);
      }
      // The four gates: dL/d(activation input), then back through their channel norms.
      for (int64_t gi = 0; gi < 4; ++gi) {
        const scalar_t* y = g + gi * M;
        for (int64_t m = 0; m < M; ++m) {
          switch (gi) {
            case 0: dv[m] = dc[m] * g_g[m] * y[m] * (scalar_t(1) - y[m]); break;      // i
            case 1: dv[m] = dc[m] * cconv[m] * y[m] * (scalar_t(1) - y[m]); break;    // f
            case 2: dv[m] = dc[m] * i_g[m] * (scalar_t(1) - y[m] * y[m]); break;      // g
            default: dv[m] = d_o[m] * y[m] * (scalar_t(1) - y[m]); break;             // o
          }
        }
        scalar_t* out = da + gi * M;
        if (kNorm) {
          const scalar_t* zh = norm_hat + (row * 5 + gi) * M;
          scalar_t* dgamma = grad_norm + (row * 10 + gi) * M;
          scalar_t* dbeta = grad_norm + (row * 10 + 5 + gi) * M;
          for (int64_t m = 0; m < M; ++m) {
            dgamma[m] += dv[m] * zh[m];
            dbeta[m] += dv[m];
            dv[m] *= gamma[gi * M + m];
          }
          normalize_backward(dv.data(), zh, norm_rstd[row * 5 + gi], out, M);
        } else {
          std::copy_n(dv.data(), M, out);
        }
      }
    }
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
          if (std::clamp<int64_t>(p - n.c + k, 1, P) == r) weight += q[(b * P + p - 1) * n.K + k];
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
  static constexpr TensorizedStepKernels kernels{cpu::matmul_out, cpu::prepare_right_operand,
                                                 im2col_cpu,       forward_rows_cpu,
                                                 nullptr,          backward_rows_cpu,
                                                 gather_rows_cpu,  nullptr,
                                                 nullptr};
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
