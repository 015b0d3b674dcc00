// The tensorized LSTM over a whole sequence (docs/cells.md, sections 2 and 7).
//
// The hidden tensor's locations are the P rows of the 2-D cell or the P x P plane of the 3-D
// cell, numbered 1..N (N = P or P*P; RowSizes in tensorized_lstm_row.h); the input x~_t is Hcat's
// location 0 (row 0, or the corner (0, 0)). Inside the ops the locations are laid out first
// ([N, B, ...]); the op's h0, c0, h_n, c_n are [B, P, M] or [B, P, P, M]. Location p's
// pre-activation is
//   A_p = sum over taps k of Hcat_{t-1}[p - c + k] W_k,   W_k = weight_hh[:, :, k]^T  [M, G]
// (k and the offset per axis) and only two kinds of terms need computing: a tap that reads a
// hidden location, where it exists (GEMMs per tap over the runs of locations it can read:
// [locations, B] blocks, thanks to the layout), and a tap that reads the input, which does not
// depend on the state and so is one GEMM for all steps before the loop. Taps reading outside
// the tensor are zero and never computed. Then per location: channel norms, gates, softmax over
// the memory taps, the memory-cell convolution (replicate padding), cell and hidden update. The
// backward runs the rows backward, sends dA back through the taps (the same GEMMs, transposed)
// and gathers the memory convolution's gradient onto the cells it read (gathers rather than
// scatters: rows are independent, sums in a fixed order); the input's gradient and every weight
// gradient are GEMMs after the loop.
//
// The driver (tensorized_lstm.cpp) is shared by the devices and the two shapes: the GEMMs go
// through ATen or the backend's own; each backend supplies the row passes, and may run the whole
// recurrence itself instead (CUDA's persistent kernels, for the 2-D cell). The row passes of both
// devices run the same row code (tensorized_lstm_row.h) on the buffers' pointers
// (forward_sequence, backward_sequence below).
#pragma once

#include <ATen/OpMathType.h>
#include <torch/types.h>

#include <tuple>

#include "dimensions.h"
#include "matmul.h"
#include "tensor_utils.h"
#include "tensorized_lstm_row.h"

namespace tlstm {

using at::Tensor;

struct TensorizedSizes {
  int64_t T, B, I, M, P, K;  // K: kernel size
  int64_t c;                 // (K-1)/2
  int64_t taps;              // K' per axis = K, or c+1 without feedback (tap k reads p-c+k)
  int64_t axes;              // 1: the 2-D cell (P rows), 2: the 3-D cell (a P x P plane)
  int64_t N;                 // locations: P, or P*P
  int64_t tap_count;         // taps of weight_hh: K', or K'*K'
  int64_t Kq;                // memory-convolution taps: K, or K*K
  int64_t G;                 // gate channels: 4M + Kq, or 4M without the memory convolution
  int64_t L;                 // depth
  int64_t S;                 // steps run: T + L - 1 with flush, else T
  int64_t delay;             // L - 1 with flush, else 0: output t is the top row after step t+delay
  bool channel_norm, memory_conv, flush;
};

// Buffers of the forward pass. "Slots" of the saved tensors are S when training (one per step,
// for the backward) and 1 otherwise (overwritten each step).
struct TensorizedForwardBuffers {
  TensorizedSizes n;
  Tensor input_pre;    // [c'^axes, S, B, G] the input's term of A at the locations that read it
                       //                    (input_slot; c' = min(c, P)): x_in W_{c-p}; a
                       //                    chunk of steps from input_first, in inference
                       //                    on a chunked backend (inference_chunk_rows)
  int64_t input_first = 0;
  Tensor zero_gates;   // [G]                zeros: the input term of the other locations
  Tensor bias_hh;      // [G]                (zeros without biases)
  Tensor norm_weight;  // [5, M]             CN gamma of i, f, g, o, c (undefined without CN)
  Tensor norm_bias;    // [5, M]             CN beta
  Tensor lengths;      // [B] int64          undefined: every sequence has length T
  Tensor hcat;         // [S+1 or 2, N+1, B, M] Hcat_{s-1} of step s: the input (when
                       //                    training, for the backward), then H_{s-1}
  Tensor pre;          // [N, B, G]          the hidden locations' taps of A for the current step
  Tensor cells;        // [S+1 or 2, N, B, M] C (op-math dtype): every step when training
  Tensor gates;        // [slots, N, B, 4M]  post-activation i, f, g, o
  Tensor q;            // [slots, N, B, Kq]  softmax of the kernel logits (memory conv only)
  Tensor norm_hat;     // [slots, N, B, 5, M] normalized z of the five CNs, op math (CN only)
  Tensor norm_rstd;    // [slots, N, B, 5]   1/sqrt(var + eps) of the five CNs, op math (CN only)
  Tensor output;       // [T, B, M]          top location h_{t+delay, N}, zero past each length
  Tensor state_hidden; // [N, B, M]          the returned H: after step T_b, the last step that
  Tensor state_cell;   // [N, B, M] op math  reads an input of sequence b (h0, c0 when T_b = 0)
  bool training;
};

// Buffers of the backward pass (saved tensors as in the forward, with S slots).
struct TensorizedBackwardBuffers {
  TensorizedSizes n;
  Tensor hcat, gates, q, norm_hat, norm_rstd, cells;
  Tensor norm_weight, norm_bias;  // [5, M] (undefined without CN)
  Tensor lengths;                 // [B] int64 or undefined
  Tensor grad_output;             // [T, B, M]
  Tensor grad_state_hidden;       // [N, B, M] op math: dL/dH_n, entering at step T_b
  Tensor grad_state_cell;         // [N, B, M] op math: dL/dC_n, entering at step T_b
  Tensor grad_hidden;             // [2, N, B, M] op math: dL/dH_s (slot cur) -> dL/dH_{s-1}
  Tensor grad_cell;               // [2, N, B, M] op math: dL/dC_s (slot cur) -> dL/dC_{s-1}
  Tensor grad_pre;                // [S, N, B, G] dL/dA of every step
  Tensor grad_cconv;              // [N, B, M]    op math: dL/dCconv of the current step
  Tensor grad_taps;               // [N, B, M]    dL/dH_{s-1} sent back through the taps
  Tensor grad_norm_rows;          // [N, B, 10, M] op math: dgamma (5M), dbeta (5M), summed per row
  Tensor row_scratch;             // [N, B, 3, M] op math: the row code's dL/dC, Cconv, dL/dO
};

// What a device backend provides: the row passes of one step s. Backends name their members
// (designated initializers); a member left out is null.
struct TensorizedStepKernels {
  // Optional: out = a b for row-major contiguous 2-D tensors (default: at::mm_out).
  MatmulOut matmul_out;
  // Optional: prepares the step GEMMs' weights once per call (default: ATen's GEMM on them).
  PrepareRightOperand prepare_right_operand;
  // From pre (the hidden rows' taps), input_pre and b_hh: the rows' H_s (in hcat's slot of step
  // s+1), cells, the saved slot s, the output row, and state_hidden, state_cell for the
  // sequences whose last input step s is.
  void (*forward_rows)(const TensorizedForwardBuffers&, int64_t s);
  // grad_pre[s], grad_cconv and the CN sums from grad_hidden[cur], grad_cell[cur], grad_output
  // (and grad_state_* for the sequences whose last input step s is).
  void (*backward_rows)(const TensorizedBackwardBuffers&, int64_t s, int64_t cur);
  // From grad_taps and grad_cconv: grad_hidden[1-cur], grad_cell[1-cur]; sequences past their
  // end pass their gradients through.
  void (*gather_rows)(const TensorizedBackwardBuffers&, int64_t s, int64_t cur);
  // Optional: the whole forward loop (every step's taps and rows) in one go, given W_col
  // [K'^axes*M, G] (W_col[k*M + m, o] = weight_hh[o, m, k], k the tap's index in weight_hh's
  // flattened taps); false (not run) sends the driver to the steps.
  bool (*forward_sequence)(const TensorizedForwardBuffers&, const Tensor& weight_col);
  // Optional: the whole backward loop, leaving dL/dH_0, dL/dC_0 in slot S % 2 as the steps do;
  // false sends the driver to the steps.
  bool (*backward_sequence)(const TensorizedBackwardBuffers&, const Tensor& weight_col);
  // Optional: compute the input rows and their term of A about this many rows (steps x B) at a
  // time, just before the steps that read them, into buffers of that size (see
  // PeepholeStepKernels::inference_chunk_rows; here in training too, where only the input rows
  // are kept for the backward). 0: all steps at once (what forward_sequence needs).
  int64_t input_chunk_rows;
  // Optional: the weight gradients' products over gathered rows (matmul.h's matmul_rows_out;
  // default: gathered copies and a GEMM).
  MatmulRowsOut matmul_rows_out;
  // Optional: in inference, compute the input's term of A from x through the folded weights
  // W_ih^T W_k where that costs fewer multiply-adds (tensorized_lstm.cpp,
  // fold_input_projection).
  bool fold_input_projection;
};

// Sizes of a call, after checking the shapes they come from: the cell's shape is weight_hh's
// ([G, M, K'] the 2-D cell, [G, M, K', K'] the 3-D), channel_norm is set by the presence of
// norm_weight and norm_bias ([5, M] each, the input's dtype and device).
TensorizedSizes tensorized_sizes(const char* op, const Tensor& input, const Tensor& h0,
                                 const Tensor& weight_hh, const c10::optional<Tensor>& norm_weight,
                                 const c10::optional<Tensor>& norm_bias, int64_t depth,
                                 int64_t kernel_size, bool feedback, bool memory_conv, bool flush);

// Returns output [T, B, M], h_n, c_n (as h0) and what the backward needs (empty unless
// training): hcat [S+1, N+1, B, M], gates [S, N, B, 4M], q [S, N, B, Kq], norm_hat
// [S, N, B, 5, M], norm_rstd [S, N, B, 5], cells [S+1, N, B, M].
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_forward_driver(
    const Tensor& input,                         // [T, B, I]
    const Tensor& h0,                            // [B, P, M] or [B, P, P, M]
    const Tensor& c0,                            // [B, P, M] or [B, P, P, M]
    const Tensor& weight_ih,                     // [M, I]
    const c10::optional<Tensor>& bias_ih,        // [M]
    const Tensor& weight_hh,                     // [G, M, K'] or [G, M, K', K']
    const c10::optional<Tensor>& bias_hh,        // [G]
    const c10::optional<Tensor>& norm_weight,    // [5, M]
    const c10::optional<Tensor>& norm_bias,      // [5, M]
    const c10::optional<Tensor>& lengths,        // [B] int64
    int64_t depth, int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
    bool training, const TensorizedStepKernels& kernels);

// Returns grad_input [T, B, I] (empty unless need_grad_input), grad_h0, grad_c0 (as h0),
// grad_weight_ih [M, I], grad_bias_ih [M], grad_weight_hh (as weight_hh), grad_bias_hh [G],
// grad_norm_weight, grad_norm_bias [5, M] (empty without CN).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_backward_driver(
    const Tensor& grad_output,                   // [T, B, M]
    const Tensor& grad_h_n,                      // as h0
    const Tensor& grad_c_n,                      // as h0
    const Tensor& input,                         // [T, B, I]
    const Tensor& weight_ih,                     // [M, I]
    const Tensor& weight_hh,                     // [G, M, K'] or [G, M, K', K']
    const c10::optional<Tensor>& norm_weight,    // [5, M]
    const c10::optional<Tensor>& norm_bias,      // [5, M]
    const c10::optional<Tensor>& lengths,        // [B] int64
    const Tensor& hcat, const Tensor& gates, const Tensor& q, const Tensor& norm_hat,
    const Tensor& norm_rstd, const Tensor& cells,  // saved by the forward
    int64_t depth, int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
    bool need_grad_input, const TensorizedStepKernels& kernels);

// The registered ops of one device. Backend provides `kernels` (TensorizedStepKernels),
// `check_input(op, input, kernel_size, memory_taps)` and a device `Guard` type (NoDeviceGuard
// for none).

// The memory convolution's taps: K, or K*K for the 3-D cell (weight_hh [G, M, K', K']).
inline int64_t memory_taps(const Tensor& weight_hh, int64_t kernel_size) {
  return weight_hh.dim() == 4 ? kernel_size * kernel_size : kernel_size;
}
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_forward_op(const Tensor& input, const Tensor& h0, const Tensor& c0,
                           const Tensor& weight_ih, const c10::optional<Tensor>& bias_ih,
                           const Tensor& weight_hh, const c10::optional<Tensor>& bias_hh,
                           const c10::optional<Tensor>& norm_weight,
                           const c10::optional<Tensor>& norm_bias,
                           const c10::optional<Tensor>& lengths, int64_t depth,
                           int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
                           bool training) {
  Backend::check_input("tlstm.tensorized_lstm_forward", input, kernel_size,
                       memory_taps(weight_hh, kernel_size));
  const typename Backend::Guard guard(input.device());
  const KernelScope scope{};
  return tensorized_lstm_forward_driver(input, h0, c0, weight_ih, bias_ih, weight_hh, bias_hh,
                                        norm_weight, norm_bias, lengths, depth, kernel_size,
                                        feedback, memory_conv, flush, training, Backend::kernels);
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_backward_op(const Tensor& grad_output, const Tensor& grad_h_n,
                            const Tensor& grad_c_n, const Tensor& input, const Tensor& weight_ih,
                            const Tensor& weight_hh, const c10::optional<Tensor>& norm_weight,
                            const c10::optional<Tensor>& norm_bias,
                            const c10::optional<Tensor>& lengths, const Tensor& hcat,
                            const Tensor& gates, const Tensor& q, const Tensor& norm_hat,
                            const Tensor& norm_rstd, const Tensor& cells, int64_t depth,
                            int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
                            bool need_grad_input) {
  Backend::check_input("tlstm.tensorized_lstm_backward", input, kernel_size,
                       memory_taps(weight_hh, kernel_size));
  const typename Backend::Guard guard(input.device());
  const KernelScope scope{};
  return tensorized_lstm_backward_driver(grad_output, grad_h_n, grad_c_n, input, weight_ih,
                                         weight_hh, norm_weight, norm_bias, lengths, hcat, gates,
                                         q, norm_hat, norm_rstd, cells, depth, kernel_size,
                                         feedback, memory_conv, flush, need_grad_input,
                                         Backend::kernels);
}

// The row code's view of a call's buffers (tensorized_lstm_row.h): their pointers, acc_t being
// the op-math type of the saved cells, norms and gradients.
inline RowSizes row_sizes(const TensorizedSizes& n) {
  return {n.T, n.B, n.M, n.P, n.K, n.c, n.taps, n.G, n.S, n.delay, n.axes, n.N, n.Kq};
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
ForwardSequence<scalar_t, acc_t> forward_sequence(const TensorizedForwardBuffers& buf) {
  return {ptr_or_null<scalar_t>(buf.input_pre),
          buf.zero_gates.data_ptr<scalar_t>(),
          buf.bias_hh.data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(buf.norm_weight),
          ptr_or_null<scalar_t>(buf.norm_bias),
          buf.hcat.data_ptr<scalar_t>(),
          buf.pre.data_ptr<scalar_t>(),
          buf.cells.data_ptr<acc_t>(),
          buf.gates.data_ptr<scalar_t>(),
          buf.n.memory_conv ? buf.q.data_ptr<scalar_t>() : nullptr,
          buf.n.channel_norm ? buf.norm_hat.data_ptr<acc_t>() : nullptr,
          buf.n.channel_norm ? buf.norm_rstd.data_ptr<acc_t>() : nullptr,
          buf.output.data_ptr<scalar_t>(),
          buf.state_hidden.data_ptr<scalar_t>(),
          buf.state_cell.data_ptr<acc_t>(),
          ptr_or_null<int64_t>(buf.lengths),
          row_sizes(buf.n),
          buf.training,
          buf.input_first,
          buf.input_pre.size(1)};
}

// grad_cconv: [N, B, M] for the step kernels, [2, N, B, M] for CUDA's persistent kernel, with
// its grad_col [N, B, K', M] (the step kernels' grad_taps is then unused).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
BackwardSequence<scalar_t, acc_t> backward_sequence(const TensorizedBackwardBuffers& buf,
                                                    const Tensor& grad_cconv,
                                                    const Tensor& grad_col = Tensor()) {
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
          grad_cconv.dim() == 4 ? n.B * n.N * n.M : 0,
          ptr_or_null<acc_t>(buf.grad_norm_rows),
          buf.row_scratch.data_ptr<acc_t>(),
          grad_col.defined() ? nullptr : buf.grad_taps.data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(grad_col),
          ptr_or_null<int64_t>(buf.lengths),
          row_sizes(n)};
}

}  // namespace tlstm
