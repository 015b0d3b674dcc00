// The row math of the tensorized LSTM (docs/cells.md, sections 2 and 7), written once for both
// devices as peephole_lstm_cell.h is for the peephole cell: a step's forward and backward pass
// over one (b, location) row, and the buffers' slots of every step. The CPU kernels
// (cpu/tensorized_lstm_cpu.cpp) and both CUDA recurrences (cuda/tensorized_rows.cuh,
// cuda/tensorized_persistent.cuh) call the very same functions.
//
// One code serves both shapes of the hidden tensor: its locations are numbered 1..N, the P rows
// of the 2-D cell (N = P) or the P x P plane of the 3-D cell (N = P*P, location (p1, p2) at
// (p1 - 1) * P + p2), and the little geometry that differs (which location a memory tap reads,
// which locations read the input) is in the functions of RowSizes below.
//
// A row is run by a team of lanes: lane l takes the channels m = l, l + kStride, ... and a
// channel norm's statistics are the team's sums. On CUDA the team is the 32 lanes of a warp
// (WarpTeam, butterfly shuffles: every lane gets the same sum, in a fixed order); on the CPU it
// is one lane with stride 1 (SerialTeam), whose loops are the plain contiguous channel loops.
// Inputs may be float32, float64, float16 or bfloat16 (scalar_t); statistics, cells and
// accumulations are in the op-math type acc_t (the same type on the CPU). Every index is 64-bit.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "fast_math.h"

namespace tlstm {

// Before an element-wise loop over a row's channels: no iteration reads what another writes,
// which the compiler cannot prove through the row's many pointers, so that the CPU's loops
// vectorize (the results are the same: each channel's operations are unchanged).
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define TLSTM_ELEMENTWISE _Pragma("GCC ivdep")
#else
#define TLSTM_ELEMENTWISE
#endif

// The channel norm's eps: CN(z) = gamma (z - mean) / sqrt(var + eps) + beta.
constexpr double kNormEps = 1e-5;

// A team of one lane: the CPU's.
struct SerialTeam {
  static constexpr int kStride = 1;
  C10_HOST_DEVICE int lane() const { return 0; }
  template <typename T>
  C10_HOST_DEVICE T sum(T v) const { return v; }
  C10_HOST_DEVICE void sync() const {}
};

// The sizes the row code reads (a plain copy of TensorizedSizes' numbers for the device), and
// where the rows sit in the buffers: location l (1..N) of sequence b is buffer row
// (l - 1) * B + b, so that a location of every sequence is one contiguous [B, ...] block and a
// run of locations one block [locations, B, ...] (the step GEMMs of tensorized_lstm.cpp run on
// them).
struct RowSizes {
  int64_t T, B, M, P, K, c, taps, G, S, delay;
  int64_t axes;  // 1: P rows (the 2-D cell), 2: a P x P plane (the 3-D cell)
  int64_t N;     // locations: P, or P * P
  int64_t Kq;    // memory-convolution taps: K, or K * K (tap (k1, k2) at k1 * K + k2)

  C10_HOST_DEVICE int64_t sequence_of(int64_t row) const { return row % B; }
  C10_HOST_DEVICE int64_t location_of(int64_t row) const { return row / B + 1; }
  C10_HOST_DEVICE int64_t row_at(int64_t b, int64_t l) const { return (l - 1) * B + b; }
  // (p1, p2) of location l on the plane (1-based); on rows, p1 = l
  C10_HOST_DEVICE int64_t first_coordinate(int64_t l) const {
    return axes == 1 ? l : (l - 1) / P + 1;
  }
  C10_HOST_DEVICE int64_t second_coordinate(int64_t l) const {
    return axes == 1 ? 1 : l - (first_coordinate(l) - 1) * P;
  }
};

// The memory convolution's replicate padding: a tap below row 1 reads row 1, above P row P.
C10_HOST_DEVICE inline int64_t clamp_row(int64_t r, int64_t P) {
  return r < 1 ? 1 : (r > P ? P : r);
}

// The location whose C_{t-1} memory tap k of location l reads: clamp(p - c + k) on each axis.
C10_HOST_DEVICE inline int64_t memory_neighbour(const RowSizes& n, int64_t l, int64_t k) {
  if (n.axes == 1) return clamp_row(l - n.c + k, n.P);
  const int64_t k1 = k / n.K, k2 = k - k1 * n.K;
  return (clamp_row(n.first_coordinate(l) - n.c + k1, n.P) - 1) * n.P +
         clamp_row(n.second_coordinate(l) - n.c + k2, n.P);
}

// Which of input_pre's slots holds the input's term of A at location l, or -1 where no tap of
// l reads the input: rows 1..c (slot p - 1), or the c' x c' corner (p1, p2 <= c, slot
// (p1 - 1) * c' + p2 - 1, c' = min(c, P)).
C10_HOST_DEVICE inline int64_t input_slot(const RowSizes& n, int64_t l) {
  const int64_t p1 = n.first_coordinate(l), p2 = n.second_coordinate(l);
  if (p1 > n.c || p2 > n.c) return -1;
  const int64_t corner = n.c < n.P ? n.c : n.P;
  return n.axes == 1 ? p1 - 1 : (p1 - 1) * corner + p2 - 1;
}

// lengths[b] clamped to [0, T]; T without lengths. The op checks the values on the CPU only,
// so that on a GPU a value below 0 acts as 0 and one above T as T.
C10_HOST_DEVICE inline int64_t sequence_length(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t length = lengths[b];
  return length < 0 ? 0 : (length > T ? T : length);
}

// Step s is the last that reads an input of sequence b: the returned state is the one after it.
C10_HOST_DEVICE inline bool last_input_step(const int64_t* lengths, int64_t b, int64_t T,
                                            int64_t s) {
  return s + 1 == sequence_length(lengths, b, T);
}

// Step s of sequence b runs while s < length_b + delay (its input row is real while s < length_b).
C10_HOST_DEVICE inline bool row_running(const int64_t* lengths, int64_t b, const RowSizes& n,
                                        int64_t s) {
  return s < sequence_length(lengths, b, n.T) + n.delay;
}

// ---- the buffers of one step ---------------------------------------------------------------

template <typename scalar_t, typename acc_t>
struct ForwardRowsParams {
  const scalar_t* pre;        // [N*B, G] the hidden locations' taps (buffer rows of RowSizes)
  const scalar_t* input_pre;  // [c'^axes, B, G] the input's, by input_slot; stride below
  int64_t input_pre_stride;   // (steps held)*B*G: from one input slot to the next
  const scalar_t* zero_gates; // [G] zeros: the input term of the rows above c
  const scalar_t* bias;       // [G]
  const scalar_t* gamma;      // [5, M]
  const scalar_t* beta;       // [5, M]
  const scalar_t* hidden_prev;  // [N*B, M]
  scalar_t* hidden_next;      // [N*B, M]
  const acc_t* cells_prev;    // [N*B, M]
  acc_t* cells_next;          // [N*B, M]
  scalar_t* gates;            // [N*B, 4M]
  scalar_t* q;                // [N*B, Kq]
  acc_t* norm_hat;            // [N*B, 5, M]
  acc_t* norm_rstd;           // [N*B, 5]
  scalar_t* output;           // [T, B, M]
  scalar_t* state_hidden;     // [N*B, M] the returned H (after each sequence's last input step)
  acc_t* state_cell;          // [N*B, M] the returned C
  const int64_t* lengths;
  RowSizes n;
  int64_t s;
};

// The forward buffers of a call (TensorizedForwardBuffers' pointers), and where step s finds
// its slots in them: the CPU's and CUDA's step kernels and the persistent kernel take their
// slots from here.
template <typename scalar_t, typename acc_t>
struct ForwardSequence {
  const scalar_t* input_pre;   // [c'^axes, input_steps, B, G] the input's term of A by
                               // input_slot, of steps input_first .. input_first + input_steps - 1
  const scalar_t* zero_gates;  // [G] zeros
  const scalar_t* bias_hh;     // [G]
  const scalar_t* gamma;       // [5, M] or null
  const scalar_t* beta;        // [5, M] or null
  scalar_t* hcat;              // [S+1 or 2, N+1, B, M] Hcat_{s-1}: the input row (training
                               // only), then H_{s-1}
  scalar_t* pre;               // [N*B, G]
  acc_t* cells;                // [S+1 or 2, N*B, M]
  scalar_t* gates;             // [slots, N*B, 4M]
  scalar_t* q;                 // [slots, N*B, Kq] or null
  acc_t* norm_hat;             // [slots, N*B, 5, M] or null
  acc_t* norm_rstd;            // [slots, N*B, 5] or null
  scalar_t* output;            // [T, B, M]
  scalar_t* state_hidden;      // [N*B, M]
  acc_t* state_cell;           // [N*B, M]
  const int64_t* lengths;      // [B] or null
  RowSizes n;
  bool training;
  int64_t input_first;         // the first step input_pre holds: 0, or a chunk's (the CPU in
  int64_t input_steps;         // inference) and how many: S, or the chunk's size

  // Hcat_{s-1}, read by step s: [N+1, B, M]
  C10_HOST_DEVICE scalar_t* hcat_of(int64_t s) const {
    return hcat + (training ? s : s % 2) * (n.N + 1) * n.B * n.M;
  }
  // H_{s-1} [N*B, M], read by step s (H_s goes to the next slot)
  C10_HOST_DEVICE scalar_t* hidden_before(int64_t s) const { return hcat_of(s) + n.B * n.M; }
  C10_HOST_DEVICE ForwardRowsParams<scalar_t, acc_t> rows(int64_t s) const {
    const int64_t rows = n.B * n.N, slot = training ? s : 0;
    const int64_t cell_prev = training ? s : s % 2, cell_next = training ? s + 1 : (s + 1) % 2;
    return {pre,
            input_pre + (s - input_first) * n.B * n.G,
            input_steps * n.B * n.G,
            zero_gates,
            bias_hh,
            gamma,
            beta,
            hidden_before(s),
            hidden_before(s + 1),
            cells + cell_prev * rows * n.M,
            cells + cell_next * rows * n.M,
            gates + slot * rows * 4 * n.M,
            q == nullptr ? nullptr : q + slot * rows * n.Kq,
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

template <typename scalar_t, typename acc_t>
struct BackwardRowsParams {
  const scalar_t* gates;       // [N*B, 4M]
  const scalar_t* q;           // [N*B, Kq]
  const acc_t* norm_hat;       // [N*B, 5, M]
  const acc_t* norm_rstd;      // [N*B, 5]
  const scalar_t* gamma;       // [5, M]
  const scalar_t* beta;        // [5, M]
  const acc_t* cells_prev;     // [N*B, M]
  const acc_t* cells;          // [N*B, M]
  const acc_t* grad_hidden;    // [N*B, M] dL/dH_s from later steps
  const acc_t* grad_cell;      // [N*B, M] dL/dC_s from later steps
  const scalar_t* grad_output; // [T, B, M]
  const acc_t* grad_state_hidden;  // [N*B, M] dL/dH_n, entering at the last input step
  const acc_t* grad_state_cell;    // [N*B, M] dL/dC_n
  scalar_t* grad_pre;          // [N*B, G] out
  acc_t* grad_cconv;           // [N*B, M] out
  acc_t* grad_norm;            // [N*B, 10, M] accumulated
  acc_t* scratch;              // [N*B, 3, M]: dL/dC, Cconv, dL/dO of the row
  const int64_t* lengths;
  RowSizes n;
  int64_t s;
};

template <typename scalar_t, typename acc_t>
struct GatherParams {
  const scalar_t* grad_taps;    // [N*B, M] dL/dH_{s-1} through the taps (the step GEMMs), or
  const scalar_t* grad_col;     // [N*B, K', M] dL/dX_col, summed here (col2im), when not null
  const acc_t* grad_cconv;      // [N*B, M]
  const scalar_t* q;            // [N*B, Kq]
  const acc_t* grad_hidden;     // [N*B, M] dL/dH_s
  const acc_t* grad_cell;       // [N*B, M] dL/dC_s
  acc_t* grad_hidden_prev;      // [N*B, M] out
  acc_t* grad_cell_prev;        // [N*B, M] out
  const int64_t* lengths;
  RowSizes n;
  int64_t s;
};

// The backward buffers of a call (TensorizedBackwardBuffers' pointers) and the slots of step s
// in them. dL/dCconv has one slot (cconv_stride 0) for the step kernels and two, by the step's
// parity, for the persistent kernel, whose gather of step s+1 runs beside the rows of step s.
template <typename scalar_t, typename acc_t>
struct BackwardSequence {
  const scalar_t* gates;       // [S, N*B, 4M]
  const scalar_t* q;           // [S, N*B, Kq] or null
  const acc_t* norm_hat;       // [S, N*B, 5, M] or null
  const acc_t* norm_rstd;      // [S, N*B, 5] or null
  const scalar_t* gamma;       // [5, M] or null
  const scalar_t* beta;        // [5, M] or null
  const acc_t* cells;          // [S+1, N*B, M]
  acc_t* grad_hidden;          // [2, N*B, M]
  acc_t* grad_cell;            // [2, N*B, M]
  const scalar_t* grad_output; // [T, B, M]
  const acc_t* grad_state_hidden;  // [N*B, M]
  const acc_t* grad_state_cell;    // [N*B, M]
  scalar_t* grad_pre;          // [S, N*B, G]
  acc_t* grad_cconv;           // [1 or 2, N*B, M]
  int64_t cconv_stride;        // 0, or N*B*M
  acc_t* grad_norm;            // [N*B, 10, M] or null
  acc_t* scratch;              // [N*B, 3, M]
  scalar_t* grad_taps;         // [N*B, M] (the step kernels) or null
  scalar_t* grad_col;          // [N*B, K', M] (the persistent kernel) or null
  const int64_t* lengths;      // [B] or null
  RowSizes n;

  C10_HOST_DEVICE acc_t* grad_cconv_of(int64_t s) const {
    return grad_cconv + (s % 2) * cconv_stride;
  }
  // rows of step s: from dL/dH_s, dL/dC_s in slot cur
  C10_HOST_DEVICE BackwardRowsParams<scalar_t, acc_t> rows(int64_t s, int64_t cur) const {
    const int64_t rows = n.B * n.N;
    return {gates + s * rows * 4 * n.M,
            q == nullptr ? nullptr : q + s * rows * n.Kq,
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
  C10_HOST_DEVICE GatherParams<scalar_t, acc_t> gather(int64_t s, int64_t cur) const {
    const int64_t rows = n.B * n.N;
    return {grad_taps,
            grad_col,
            grad_cconv_of(s),
            q == nullptr ? nullptr : q + s * rows * n.Kq,
            grad_hidden + cur * rows * n.M,
            grad_cell + cur * rows * n.M,
            grad_hidden + (1 - cur) * rows * n.M,
            grad_cell + (1 - cur) * rows * n.M,
            lengths,
            n,
            s};
  }
};

// ---- forward -------------------------------------------------------------------------------

// The sums over the M channels of kCount values (acc_t), value(m, v) writing channel m's into
// v[0 .. kCount), over the team, each in a fixed order. A one-lane team (the CPU) keeps kParts
// partial sums of each, part j taking the channels j, j + kParts, ..., and adds them up in a
// fixed tree at the end: the loop then runs in vector registers with the same result whatever
// the CPU's vector width, where one running sum would chain every add to the one before it;
// and the kCount sums, independent, overlap in the CPU's pipeline where one after the other
// each waited on its own adds.
template <int kCount, class Team, typename acc_t, typename Value>
C10_HOST_DEVICE inline void channel_sums(const Team& team, int64_t M, const Value& value,
                                         acc_t* sums) {
  acc_t v[kCount];
  if constexpr (Team::kStride == 1) {
    constexpr int64_t kParts = 16;
    acc_t part[kCount][kParts];
    for (int i = 0; i < kCount; ++i) {
      for (int64_t j = 0; j < kParts; ++j) part[i][j] = 0;
    }
    const int64_t whole = M - M % kParts;
    for (int64_t m = 0; m < whole; m += kParts) {
      for (int64_t j = 0; j < kParts; ++j) {
        value(m + j, v);
        for (int i = 0; i < kCount; ++i) part[i][j] += v[i];
      }
    }
    for (int64_t m = whole; m < M; ++m) {
      value(m, v);
      for (int i = 0; i < kCount; ++i) part[i][m - whole] += v[i];
    }
    for (int i = 0; i < kCount; ++i) {
      for (int64_t width = kParts / 2; width > 0; width /= 2) {
        for (int64_t j = 0; j < width; ++j) part[i][j] += part[i][j + width];
      }
      sums[i] = team.sum(part[i][0]);
    }
  } else {
    acc_t sum[kCount];
    for (int i = 0; i < kCount; ++i) sum[i] = 0;
    for (int64_t m = team.lane(); m < M; m += Team::kStride) {
      value(m, v);
      for (int i = 0; i < kCount; ++i) sum[i] += v[i];
    }
    for (int i = 0; i < kCount; ++i) sums[i] = team.sum(sum[i]);
  }
}

// The sum over the M channels of value(m) (an acc_t), over the team, in a fixed order.
template <class Team, typename Value>
C10_HOST_DEVICE inline auto channel_sum(const Team& team, int64_t M, const Value& value) {
  using acc_t = decltype(value(int64_t(0)));
  acc_t sum;
  channel_sums<1>(team, M, [&](int64_t m, acc_t* v) { v[0] = value(m); }, &sum);
  return sum;
}

// Means and 1/sqrt(var + eps) (biased variance) of the M values value(i, m) for i < kCount,
// over the team.
template <int kCount, class Team, typename acc_t, typename Value>
C10_HOST_DEVICE inline void channel_moments(const Team& team, int64_t M, const Value& value,
                                            acc_t* mean, acc_t* rstd) {
  acc_t sums[kCount];
  channel_sums<kCount>(team, M, [&](int64_t m, acc_t* v) {
    for (int i = 0; i < kCount; ++i) v[i] = acc_t(value(i, m));
  }, sums);
  for (int i = 0; i < kCount; ++i) mean[i] = sums[i] / acc_t(M);
  channel_sums<kCount>(team, M, [&](int64_t m, acc_t* v) {
    for (int i = 0; i < kCount; ++i) {
      const acc_t d = value(i, m) - mean[i];
      v[i] = d * d;
    }
  }, sums);
  for (int i = 0; i < kCount; ++i) rstd[i] = acc_t(1) / sqrt_(sums[i] / acc_t(M) + acc_t(kNormEps));
}

// A + b of gate channel o of a row: the hidden rows' taps, the bias and the input row's term
// (`in`: zeros for rows that do not read it; no branch, so that the loops vectorize).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t gate_input(const scalar_t* a, const scalar_t* in,
                                        const scalar_t* bias, int64_t o) {
  return acc_t(a[o]) + acc_t(bias[o]) + acc_t(in[o]);
}

// The input's term of A for row `row` of step p.s (zeros when its taps do not read it).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline const scalar_t* input_term(const ForwardRowsParams<scalar_t, acc_t>& p,
                                                  int64_t row) {
  const int64_t slot = input_slot(p.n, p.n.location_of(row));
  return slot >= 0 ? p.input_pre + slot * p.input_pre_stride + p.n.sequence_of(row) * p.n.G
                   : p.zero_gates;
}

// The channel norms' statistics of the four gates of row `row` (their rstd saved), and the
// gates' inputs u = A + b in the norm's zh slots, where forward_gate reads them (and writes zh
// over them): each u is added up from its terms once, not again for each pass over it.
template <class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void gate_moments(const Team& team,
                                         const ForwardRowsParams<scalar_t, acc_t>& p, int64_t row,
                                         const scalar_t* in, acc_t* mean, acc_t* rstd) {
  const int64_t M = p.n.M;
  const scalar_t* a = p.pre + row * p.n.G;
  acc_t* u = p.norm_hat + row * 5 * M;  // [4, M]: the zh slots of the four gates
  TLSTM_ELEMENTWISE
  for (int64_t m = team.lane(); m < M; m += Team::kStride) {
    for (int g = 0; g < 4; ++g) {
      u[g * M + m] = gate_input<scalar_t, acc_t>(a, in, p.bias, g * M + m);
    }
  }
  channel_moments<4>(team, M, [&](int g, int64_t m) { return u[g * M + m]; }, mean, rstd);
  if (team.lane() == 0) {
    for (int g = 0; g < 4; ++g) p.norm_rstd[row * 5 + g] = rstd[g];
  }
}

// Gate g (0..3: i, f, g, o) of row `row`: act(CN_g(A_g + b_g)), act tanh for g and the
// sigmoid for the others, given the norm's statistics; the norm's zh saved (over the gate's
// input, which gate_moments left there).
template <bool kTanh, bool kNorm, class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void forward_gate(const Team& team,
                                         const ForwardRowsParams<scalar_t, acc_t>& p, int64_t row,
                                         const scalar_t* in, int g, acc_t mean, acc_t rstd) {
  const int64_t M = p.n.M;
  const scalar_t* a = p.pre + row * p.n.G + g * M;
  const scalar_t* bias = p.bias + g * M;
  const scalar_t* in_g = in + g * M;
  scalar_t* out = p.gates + row * 4 * M + g * M;
  acc_t* zh_save = kNorm ? p.norm_hat + (row * 5 + g) * M : nullptr;
  TLSTM_ELEMENTWISE
  for (int64_t m = team.lane(); m < M; m += Team::kStride) {
    acc_t u = kNorm ? zh_save[m] : gate_input<scalar_t, acc_t>(a, in_g, bias, m);
    if (kNorm) {
      const acc_t zh = (u - mean) * rstd;
      zh_save[m] = zh;
      u = acc_t(p.gamma[g * M + m]) * zh + acc_t(p.beta[g * M + m]);
    }
    out[m] = scalar_t(kTanh ? tanh_(u) : sigmoid(u));
  }
}

// Step p.s of one (b, location) row. qk: room for Kq values of the team's lane (the softmax
// weights, which every lane computes: Kq is small).
template <bool kNorm, bool kMemoryConv, class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void tensorized_forward_row(const Team& team,
                                                   const ForwardRowsParams<scalar_t, acc_t>& p,
                                                   int64_t row, acc_t* qk) {
  const RowSizes n = p.n;
  const int64_t M = n.M, lane = team.lane();
  constexpr int kStride = Team::kStride;
  const int64_t b = n.sequence_of(row), l = n.location_of(row);  // location l of 1..N
  const bool top = l == n.N && p.s >= n.delay;  // the output's: row P, or (P, P)
  scalar_t* y = top ? p.output + ((p.s - n.delay) * n.B + b) * M : nullptr;
  scalar_t* h_out = p.hidden_next + row * M;
  acc_t* c_out = p.cells_next + row * M;
  if (!row_running(p.lengths, b, n, p.s)) {  // finished: the state stays
    // the saved slots are never read for this row; zeros keep the op's outputs defined
    for (int64_t m = lane; m < M; m += kStride) {
      h_out[m] = p.hidden_prev[row * M + m];
      c_out[m] = p.cells_prev[row * M + m];
      if (top) y[m] = scalar_t(0);
      for (int g = 0; g < 4; ++g) p.gates[row * 4 * M + g * M + m] = scalar_t(0);
      if (kNorm) {
        for (int g = 0; g < 5; ++g) p.norm_hat[(row * 5 + g) * M + m] = acc_t(0);
      }
    }
    if (kMemoryConv) {
      for (int64_t k = lane; k < n.Kq; k += kStride) p.q[row * n.Kq + k] = scalar_t(0);
    }
    if (kNorm) {
      for (int64_t g = lane; g < 5; g += kStride) p.norm_rstd[row * 5 + g] = acc_t(0);
    }
    return;
  }
  const scalar_t* in = input_term(p, row);
  acc_t mean[4] = {0, 0, 0, 0}, rstd[4] = {1, 1, 1, 1};
  if constexpr (kNorm) gate_moments(team, p, row, in, mean, rstd);
  forward_gate<false, kNorm>(team, p, row, in, 0, mean[0], rstd[0]);  // i
  forward_gate<false, kNorm>(team, p, row, in, 1, mean[1], rstd[1]);  // f
  forward_gate<true, kNorm>(team, p, row, in, 2, mean[2], rstd[2]);   // g
  forward_gate<false, kNorm>(team, p, row, in, 3, mean[3], rstd[3]);  // o
  const scalar_t* a = p.pre + row * n.G;
  const scalar_t* g_out = p.gates + row * 4 * M;
  // Q = softmax of the Kq logits, rounded to the saved dtype, so that the backward's Q is the
  // forward's; then the memory convolution (into c_out: Cconv = sum_k Q_k C_{t-1} at tap k's
  // location, tap by tap) and the new cell.
  if (kMemoryConv) {
    acc_t top_logit = -INFINITY, total = 0;
    for (int64_t k = 0; k < n.Kq; ++k) {
      qk[k] = gate_input<scalar_t, acc_t>(a, in, p.bias, 4 * M + k);
      top_logit = top_logit < qk[k] ? qk[k] : top_logit;
    }
    for (int64_t k = 0; k < n.Kq; ++k) total += (qk[k] = exp_(qk[k] - top_logit));
    for (int64_t k = 0; k < n.Kq; ++k) qk[k] = acc_t(scalar_t(qk[k] / total));
    for (int64_t k = lane; k < n.Kq; k += kStride) p.q[row * n.Kq + k] = scalar_t(qk[k]);
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) c_out[m] = 0;
    for (int64_t k = 0; k < n.Kq; ++k) {
      const acc_t* c_k = p.cells_prev + n.row_at(b, memory_neighbour(n, l, k)) * M;
      const acc_t q_k = qk[k];
      TLSTM_ELEMENTWISE
      for (int64_t m = lane; m < M; m += kStride) c_out[m] += q_k * c_k[m];
    }
  } else {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) c_out[m] = p.cells_prev[row * M + m];
  }
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) {
    c_out[m] = acc_t(g_out[2 * M + m]) * acc_t(g_out[m]) + c_out[m] * acc_t(g_out[M + m]);
  }
  team.sync();
  // H = O tanh(CN_c(C)); the top row is an output, and the returned state is taken after each
  // sequence's last input step.
  acc_t mean_c = 0, rstd_c = 1;
  if (kNorm) {
    channel_moments<1>(team, M, [&](int, int64_t m) { return c_out[m]; }, &mean_c, &rstd_c);
    if (lane == 0) p.norm_rstd[row * 5 + 4] = rstd_c;
  }
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) {
    acc_t u = c_out[m];
    if (kNorm) {
      const acc_t zh = (u - mean_c) * rstd_c;
      p.norm_hat[(row * 5 + 4) * M + m] = zh;
      u = acc_t(p.gamma[4 * M + m]) * zh + acc_t(p.beta[4 * M + m]);
    }
    h_out[m] = scalar_t(tanh_(u) * acc_t(g_out[3 * M + m]));
  }
  // (a lane reads back only the channels it wrote: loops without conditions vectorize on the CPU)
  if (top) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) y[m] = h_out[m];
  }
  if (last_input_step(p.lengths, b, n.T, p.s)) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) {
      p.state_hidden[row * M + m] = h_out[m];
      p.state_cell[row * M + m] = c_out[m];
    }
  }
}

// ---- backward ------------------------------------------------------------------------------

// dL/d(activation input) of gate kGate (0..3: i, f, g, o) at channel m, given the row's gates
// g, dL/dC (d_c), Cconv and dL/dO (d_o).
template <int kGate, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t gate_input_grad(const scalar_t* g, const acc_t* d_c,
                                             const acc_t* cconv, const acc_t* d_o, int64_t M,
                                             int64_t m) {
  const acc_t y = acc_t(g[kGate * M + m]);
  if (kGate == 0) return d_c[m] * acc_t(g[2 * M + m]) * y * (acc_t(1) - y);  // i
  if (kGate == 1) return d_c[m] * cconv[m] * y * (acc_t(1) - y);            // f
  if (kGate == 2) return d_c[m] * acc_t(g[m]) * (acc_t(1) - y * y);         // g
  return d_o[m] * y * (acc_t(1) - y);                                       // o
}

// Channel m's two terms of the sums that gate kGate's norm backward needs, into v[0], v[1]:
// dL/dzh = d gamma and dL/dzh zh (d: dL/d(activation input)).
template <int kGate, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void gate_norm_terms(const BackwardRowsParams<scalar_t, acc_t>& p,
                                            int64_t row, const acc_t* d_c, const acc_t* cconv,
                                            const acc_t* d_o, int64_t m, acc_t* v) {
  const int64_t M = p.n.M;
  const acc_t dzh = gate_input_grad<kGate>(p.gates + row * 4 * M, d_c, cconv, d_o, M, m) *
                    acc_t(p.gamma[kGate * M + m]);
  v[0] = dzh;
  v[1] = dzh * p.norm_hat[(row * 5 + kGate) * M + m];
}

// dL/dA of gate kGate of row `row`: dL/d(activation input), back through its channel norm,
// given the channel means t1, t2 of its gate_norm_terms (and the norm parameters' gradients,
// added up per row).
template <int kGate, bool kNorm, class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void backward_gate(const Team& team,
                                          const BackwardRowsParams<scalar_t, acc_t>& p,
                                          int64_t row, const acc_t* d_c, const acc_t* cconv,
                                          const acc_t* d_o, acc_t t1, acc_t t2) {
  const int64_t M = p.n.M;
  const scalar_t* g = p.gates + row * 4 * M;
  scalar_t* da = p.grad_pre + row * p.n.G + kGate * M;
  if (!kNorm) {
    TLSTM_ELEMENTWISE
    for (int64_t m = team.lane(); m < M; m += Team::kStride) {
      da[m] = scalar_t(gate_input_grad<kGate>(g, d_c, cconv, d_o, M, m));
    }
    return;
  }
  const acc_t* zh = p.norm_hat + (row * 5 + kGate) * M;
  const scalar_t* gamma = p.gamma + kGate * M;
  acc_t* dgamma = p.grad_norm + (row * 10 + kGate) * M;
  acc_t* dbeta = p.grad_norm + (row * 10 + 5 + kGate) * M;
  const acc_t rstd = p.norm_rstd[row * 5 + kGate];
  TLSTM_ELEMENTWISE
  for (int64_t m = team.lane(); m < M; m += Team::kStride) {
    const acc_t d = gate_input_grad<kGate>(g, d_c, cconv, d_o, M, m);
    dgamma[m] += d * zh[m];
    dbeta[m] += d;
    da[m] = scalar_t(rstd * (d * acc_t(gamma[m]) - t1 - zh[m] * t2));
  }
}

// Step p.s of one (b, location) row backward: dL/dA of the row, dL/dCconv and the CN
// parameters' sums. dq: room for Kq values of the team's lane.
template <bool kNorm, bool kMemoryConv, class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void tensorized_backward_row(const Team& team,
                                                    const BackwardRowsParams<scalar_t, acc_t>& p,
                                                    int64_t row, acc_t* dq) {
  const RowSizes n = p.n;
  const int64_t M = n.M, lane = team.lane();
  constexpr int kStride = Team::kStride;
  const int64_t b = n.sequence_of(row), l = n.location_of(row);
  scalar_t* da = p.grad_pre + row * n.G;
  if (!row_running(p.lengths, b, n, p.s)) {  // finished: nothing reaches A
    for (int64_t o = lane; o < n.G; o += kStride) da[o] = scalar_t(0);
    return;
  }
  const scalar_t* g = p.gates + row * 4 * M;
  const scalar_t* go = (l == n.N && p.s >= n.delay)  // the top location is output s - delay
                           ? p.grad_output + ((p.s - n.delay) * n.B + b) * M
                           : nullptr;
  acc_t* d_c = p.scratch + (row * 3 + 0) * M;
  acc_t* cconv = p.scratch + (row * 3 + 1) * M;
  acc_t* d_o = p.scratch + (row * 3 + 2) * M;
  const acc_t* zh_c = kNorm ? p.norm_hat + (row * 5 + 4) * M : nullptr;
  const bool returned = last_input_step(p.lengths, b, n.T, p.s);  // dL/dH_n, dL/dC_n enter
  // dL/dH of the row, into d_o for now: from later steps, dL/dH_n at the last input step, and
  // the output's gradient at the top row. (Loops without conditions, and the norm's sums below
  // in a loop of their own, leave the loops free to vectorize on the CPU; a lane reads back
  // only the channels it wrote.)
  const acc_t* grad_hidden = p.grad_hidden + row * M;
  if (returned) {
    const acc_t* grad_state = p.grad_state_hidden + row * M;
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) d_o[m] = grad_hidden[m] + grad_state[m];
  } else {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) d_o[m] = grad_hidden[m];
  }
  if (go != nullptr) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) d_o[m] += acc_t(go[m]);
  }
  // H = tanh(u) O with u = CN_c(C): dL/dO, and dL/du into d_c for now.
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) {
    const acc_t dh = d_o[m];
    const acc_t u = kNorm ? acc_t(p.gamma[4 * M + m]) * zh_c[m] + acc_t(p.beta[4 * M + m])
                          : p.cells[row * M + m];
    const acc_t tu = tanh_(u);
    d_o[m] = dh * tu;
    const acc_t du = dh * acc_t(g[3 * M + m]) * (acc_t(1) - tu * tu);
    d_c[m] = du;
  }
  acc_t s1 = 0, s2 = 0;
  if (kNorm) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) {
      p.grad_norm[(row * 10 + 4) * M + m] += d_c[m] * zh_c[m];
      p.grad_norm[(row * 10 + 9) * M + m] += d_c[m];
    }
    acc_t sums[2];  // of dL/dzh = dL/du gamma and of dL/dzh zh, together
    channel_sums<2>(team, M, [&](int64_t m, acc_t* v) {
      v[0] = d_c[m] * acc_t(p.gamma[4 * M + m]);
      v[1] = v[0] * zh_c[m];
    }, sums);
    s1 = sums[0] / acc_t(M);
    s2 = sums[1] / acc_t(M);
  }
  // dL/dC; the memory convolution's input Cconv and dL/dQ.
  const scalar_t* qr = kMemoryConv ? p.q + row * n.Kq : nullptr;
  const acc_t* grad_cell = p.grad_cell + row * M;  // dL/dC from later steps (and dL/dC_n)
  if (returned) {
    const acc_t* grad_state = p.grad_state_cell + row * M;
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) cconv[m] = grad_cell[m] + grad_state[m];
  } else {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) cconv[m] = grad_cell[m];
  }
  const acc_t rstd_c = kNorm ? p.norm_rstd[row * 5 + 4] : acc_t(1);
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) {
    const acc_t dc = cconv[m] + (kNorm ? rstd_c * (d_c[m] * acc_t(p.gamma[4 * M + m]) - s1 -
                                                   zh_c[m] * s2)
                                       : d_c[m]);
    d_c[m] = dc;
  }
  // Cconv again (sum_k Q_k C_{t-1} at tap k's location, tap by tap, as the forward summed it)
  if (kMemoryConv) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) cconv[m] = 0;
    for (int64_t k = 0; k < n.Kq; ++k) {
      const acc_t* c_k = p.cells_prev + n.row_at(b, memory_neighbour(n, l, k)) * M;
      const acc_t q_k = acc_t(qr[k]);
      TLSTM_ELEMENTWISE
      for (int64_t m = lane; m < M; m += kStride) cconv[m] += q_k * c_k[m];
    }
  } else {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) cconv[m] = p.cells_prev[row * M + m];
  }
  acc_t* grad_cconv = p.grad_cconv + row * M;
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) grad_cconv[m] = d_c[m] * acc_t(g[M + m]);  // C = G I + Cconv F
  if (kMemoryConv) {
    // dL/dQ_k = dCconv . C_{t-1} at tap k's location; then through the softmax:
    // dA^q_k = Q_k (dQ_k - sum_j Q_j dQ_j)
    acc_t weighted = 0;
    for (int64_t k = 0; k < n.Kq; ++k) {
      const acc_t* c_k = p.cells_prev + n.row_at(b, memory_neighbour(n, l, k)) * M;
      dq[k] = channel_sum(team, M, [&](int64_t m) { return grad_cconv[m] * c_k[m]; });
      weighted += acc_t(qr[k]) * dq[k];
    }
    for (int64_t k = lane; k < n.Kq; k += kStride) {
      da[4 * M + k] = scalar_t(acc_t(qr[k]) * (dq[k] - weighted));
    }
  }
  team.sync();
  // The four gates: dL/d(activation input), then back through their channel norms, whose
  // eight channel sums are taken together.
  acc_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if constexpr (kNorm) {
    channel_sums<8>(team, M, [&](int64_t m, acc_t* v) {
      gate_norm_terms<0>(p, row, d_c, cconv, d_o, m, v);
      gate_norm_terms<1>(p, row, d_c, cconv, d_o, m, v + 2);
      gate_norm_terms<2>(p, row, d_c, cconv, d_o, m, v + 4);
      gate_norm_terms<3>(p, row, d_c, cconv, d_o, m, v + 6);
    }, t);
    for (int i = 0; i < 8; ++i) t[i] /= acc_t(M);
  }
  backward_gate<0, kNorm>(team, p, row, d_c, cconv, d_o, t[0], t[1]);
  backward_gate<1, kNorm>(team, p, row, d_c, cconv, d_o, t[2], t[3]);
  backward_gate<2, kNorm>(team, p, row, d_c, cconv, d_o, t[4], t[5]);
  backward_gate<3, kNorm>(team, p, row, d_c, cconv, d_o, t[6], t[7]);
}

// ---- gather --------------------------------------------------------------------------------

// Location r of sequence b (buffer row `row`), after the rows of step s: dL/dH_{s-1} (what the
// taps sent back, plus nothing else: H_{s-1} enters step s only through the taps) and
// dL/dC_{s-1} (the memory convolution's or the cell's own). Finished sequences pass dL/dH_s and
// dL/dC_s through. Gathers rather than scatters: each output has one writer and a fixed order
// of sums. sources, weights: room for Kq values of the team's lane (the locations whose memory
// taps read r, at most (2c+1)^axes <= Kq, and the sum of Q over those taps: every lane finds
// them, once per row).
template <bool kMemoryConv, class Team, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void tensorized_gather_row(const Team& team,
                                                  const GatherParams<scalar_t, acc_t>& p,
                                                  int64_t row, int64_t* sources, acc_t* weights) {
  const RowSizes& n = p.n;
  const int64_t M = n.M, lane = team.lane(), b = n.sequence_of(row), r = n.location_of(row);
  constexpr int kStride = Team::kStride;
  acc_t* dh = p.grad_hidden_prev + row * M;
  acc_t* dc = p.grad_cell_prev + row * M;
  if (!row_running(p.lengths, b, n, p.s)) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) {
      dh[m] = p.grad_hidden[row * M + m];
      dc[m] = p.grad_cell[row * M + m];
    }
    return;
  }
  if (p.grad_col != nullptr) {  // col2im (rows only): tap k of row pr = r + c - k read row r
    for (int64_t m = lane; m < M; m += kStride) {
      acc_t sum = 0;
      for (int64_t k = 0; k < n.taps; ++k) {
        const int64_t pr = r + n.c - k;
        if (pr >= 1 && pr <= n.P) sum += acc_t(p.grad_col[(n.row_at(b, pr) * n.taps + k) * M + m]);
      }
      dh[m] = sum;
    }
  } else {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) dh[m] = acc_t(p.grad_taps[row * M + m]);
  }
  if (!kMemoryConv) {
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) dc[m] = p.grad_cconv[row * M + m];
    return;
  }
  // The locations near r whose memory taps read C_{s-1} at r, each with the sum of Q over those
  // taps.
  const int64_t r1 = n.first_coordinate(r), r2 = n.second_coordinate(r);
  const int64_t lo1 = r1 - n.c < 1 ? 1 : r1 - n.c, hi1 = r1 + n.c > n.P ? n.P : r1 + n.c;
  const int64_t lo2 = n.axes == 1 ? 1 : (r2 - n.c < 1 ? 1 : r2 - n.c);
  const int64_t hi2 = n.axes == 1 ? 1 : (r2 + n.c > n.P ? n.P : r2 + n.c);
  const int64_t K2 = n.axes == 1 ? 1 : n.K;  // taps along the second axis
  int64_t count = 0;
  for (int64_t l1 = lo1; l1 <= hi1; ++l1) {
    for (int64_t l2 = lo2; l2 <= hi2; ++l2) {
      const int64_t source = n.row_at(b, n.axes == 1 ? l1 : (l1 - 1) * n.P + l2);
      acc_t weight = 0;
      for (int64_t k1 = 0; k1 < n.K; ++k1) {
        if (clamp_row(l1 - n.c + k1, n.P) != r1) continue;
        for (int64_t k2 = 0; k2 < K2; ++k2) {
          if (n.axes == 2 && clamp_row(l2 - n.c + k2, n.P) != r2) continue;
          weight += acc_t(p.q[source * n.Kq + k1 * K2 + k2]);
        }
      }
      sources[count] = source;
      weights[count++] = weight;
    }
  }
  TLSTM_ELEMENTWISE
  for (int64_t m = lane; m < M; m += kStride) dc[m] = 0;
  for (int64_t j = 0; j < count; ++j) {
    const acc_t* g = p.grad_cconv + sources[j] * M;
    const acc_t w = weights[j];
    TLSTM_ELEMENTWISE
    for (int64_t m = lane; m < M; m += kStride) dc[m] += w * g[m];
  }
}

}  // namespace tlstm
