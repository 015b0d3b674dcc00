// The peephole LSTM over one layer and one direction of a whole sequence (docs/cells.md, section 1).
//
// The sequence driver (peephole_lstm.cpp) is the same for every device: it runs the input
// projection for all steps as one GEMM, walks the steps, applies the optional projection, and
// computes the weight gradients as GEMMs after the loop, all through ATen (MKL / cuBLAS on the
// current stream). Each device backend supplies one step: the recurrent GEMM and the fused
// element-wise pass, forward and backward.
#pragma once

#include <torch/types.h>

#include <tuple>
#include <vector>

#include "dimensions.h"
#include "dispatch.h"
#include "matmul.h"
#include "peephole_lstm_cell.h"
#include "tensor_utils.h"

namespace tlstm {

using at::Tensor;

Activation parse_activation(c10::string_view name);

// Time index and state slots of one step. Forward direction: step s reads slot t = s and
// writes slot t+1; reverse: it reads slot t+1 and writes slot t (t = T-1-s), so that slot
// order is time order in both. Without the saved history the slots alternate 0 and 1.
// gate: step t's slot in the gates buffer, t itself unless the input projection is computed a
// chunk of steps at a time (PeepholeStepKernels::inference_chunk_rows).
struct StepSlots {
  int64_t t;
  int64_t prev;
  int64_t next;
  int64_t gate;
};

// Buffers of the forward pass of one layer and direction.
struct PeepholeForwardBuffers {
  Tensor weight_hh_t;    // [R, 4H]     W_hh^T: contiguous, or with prepare_forward (which
                         //             packs it) the transposed view of W_hh
  Tensor gates;          // [T, B, 4H]  in: a_t without biases; out: post-activation i, f, g, o
                         //             (in inference on a chunked backend: [chunk, B, 4H],
                         //             step t at slot StepSlots::gate)
  Tensor bias;           // [4H]        b_ih + b_hh (zeros without biases)
  Tensor hidden_states;  // [S, B, R]   h of every step (or two alternating slots)
  Tensor cell_states;    // [S, B, H]   c of every step, op-math dtype (float for half inputs)
  Tensor output;         // [T, B, R]   h_t where the sequence is active, zero past its end
  Tensor hidden_pre;     // [B, H]      o * act(c) before the projection; defined only with one
  Tensor peephole;       // [3, H]      w_ci, w_cf, w_co (zeros without peepholes)
  Tensor lengths;        // [B] int64   undefined: every sequence has length T
  Activation activation;
  std::vector<Tensor> workspace;  // owned by the backend (e.g. W_hh^T packed for its GEMM)
};

// Buffers of the backward pass of one layer and direction.
struct PeepholeBackwardBuffers {
  Tensor weight_hh;          // [4H, R]     W_hh, contiguous
  Tensor gates;              // [T, B, 4H]  saved post-activation gates
  Tensor cell_states;        // [T+1, B, H] saved cells, op-math dtype
  Tensor grad_output;        // [T, B, R]
  Tensor grad_hidden;        // [B, R]      in: dL/dh_t from later steps and h_n, without the
                             //             output's own gradient
  Tensor grad_hidden_next;   // [B, R]      out: dL/dh_{t-1} (rows past their end: dL/dh_t)
  Tensor grad_hidden_pre;    // [B, H]      dL/dm_t through the projection (projection only)
  Tensor grad_cell;          // [B, H]      dL/dc_t, running, op-math dtype
  Tensor grad_gates;         // [T, B, 4H]  out: dL/da_t
  Tensor hidden_pre_all;     // [T, B, H]   out: m_t, for the projection's weight gradient
  Tensor grad_peephole_rows; // [B, 3H]     out: per-row sums of the peephole gradients, op-math
                             //             dtype; [0, 3H] without peepholes
  Tensor peephole;           // [3, H]      w_ci, w_cf, w_co (zeros without peepholes)
  Tensor lengths;            // [B] int64   or undefined
  Activation activation;
  std::vector<Tensor> workspace;  // owned by the backend
};

// The compile-time switches of a step kernel, chosen from the buffers: fn(Act{}, proj) for a
// forward step and fn(Act{}, proj, peep) for a backward step, proj and peep being
// std::true_type or std::false_type (a projection; peephole gradients wanted).
template <class Fn>
void dispatch_activation(Activation activation, const Fn& fn) {
  if (activation == Activation::Tanh) {
    fn(TanhActivation{});
  } else {
    fn(IdentityActivation{});
  }
}

template <class Fn>
void dispatch_step_switches(const PeepholeForwardBuffers& buf, const Fn& fn) {
  dispatch_activation(buf.activation, [&](auto act) {
    dispatch_flag(buf.hidden_pre.defined(), [&](auto proj) { fn(act, proj); });
  });
}

template <class Fn>
void dispatch_step_switches(const PeepholeBackwardBuffers& buf, const Fn& fn) {
  dispatch_activation(buf.activation, [&](auto act) {
    dispatch_flags(buf.grad_hidden_pre.defined(), buf.grad_peephole_rows.numel() > 0,
                   [&](auto proj, auto peep) { fn(act, proj, peep); });
  });
}

// What a device backend provides: one step of the recurrence.
struct PeepholeStepKernels {
  // Optional: out = a b for row-major contiguous 2-D tensors (default: at::mm_out).
  MatmulOut matmul_out;
  // Optional, once before the steps: per-call set-up kept in buf.workspace.
  void (*prepare_forward)(PeepholeForwardBuffers&);
  // gates_t += h_{t-1} W_hh^T, then the element-wise pass: post-activation gates, c_t, and
  // h_t and output_t (or, with a projection, hidden_pre); rows past their end keep their state.
  void (*forward_step)(const PeepholeForwardBuffers&, const StepSlots&);
  void (*prepare_backward)(PeepholeBackwardBuffers&);
  // The element-wise pass (grad_gates_t, grad_cell, peephole sums, hidden_pre_all), then
  // grad_hidden_next = grad_gates_t W_hh, keeping grad_hidden for rows past their end.
  void (*backward_step)(const PeepholeBackwardBuffers&, const StepSlots&);
  // Optional, never called with a projection: all T > 0 steps in one go, computing what the
  // steps one by one compute (up to summation order and rounding of the intermediates); returns
  // false to have the driver walk the steps instead.
  // Forward: whole_history says whether the slots are T+1 (training) or 2 alternating ones.
  bool (*forward_sequence)(const PeepholeForwardBuffers&, int64_t T, bool reverse,
                           bool whole_history);
  // Backward: reads dL/dh_T from buf.grad_hidden and leaves dL/dh_0 in buf.grad_hidden_next.
  bool (*backward_sequence)(const PeepholeBackwardBuffers&, int64_t T, bool reverse);
  // Optional: prepares a right operand of many products once (here W_ih^T, for the chunks
  // below; default: ATen's GEMM on it as it is).
  PrepareRightOperand prepare_right_operand;
  // Optional: in inference, project the input about this many rows (steps x B) at a time, just
  // before the steps that read them, into a gates buffer of that size, instead of all T steps
  // into [T, B, 4H] first. On the CPU each call's large buffers are fresh pages (page faults,
  // zeroing) and fall out of the cache before the steps read them. 0: all steps at once.
  int64_t inference_chunk_rows;
  // Optional: the weight gradients' products over the steps' rows (matmul.h's matmul_t;
  // default: ATen's GEMM).
  MatmulRowsOut matmul_rows_out;
};

// Returns output [T, B, R], h_n [B, R], c_n [B, H], and what the backward needs:
// gates [T, B, 4H], hidden_states [T+1, B, R], cell_states [T+1, B, H] (empty when !training).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_forward_driver(
    const Tensor& input,                    // [T, B, I]
    const Tensor& h0,                       // [B, R]
    const Tensor& c0,                       // [B, H]
    const Tensor& weight_ih,                // [4H, I]
    const Tensor& weight_hh,                // [4H, R]
    const c10::optional<Tensor>& bias_ih,   // [4H]
    const c10::optional<Tensor>& bias_hh,   // [4H]
    const c10::optional<Tensor>& weight_peephole,  // [3, H]
    const c10::optional<Tensor>& weight_proj,      // [R, H]
    const c10::optional<Tensor>& lengths,   // [B] int64
    bool reverse, c10::string_view activation, bool training,
    const PeepholeStepKernels& kernels);

// Returns grad_input [T, B, I] (empty unless need_grad_input), grad_h0 [B, R], grad_c0 [B, H],
// grad_weight_ih [4H, I], grad_weight_hh [4H, R], grad_bias [4H] (for each bias vector),
// grad_weight_peephole [3, H] (empty without peepholes), grad_weight_proj [R, H] (empty without).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_backward_driver(
    const Tensor& grad_output,              // [T, B, R]
    const Tensor& grad_h_n,                 // [B, R]
    const Tensor& grad_c_n,                 // [B, H]
    const Tensor& input,                    // [T, B, I]
    const Tensor& weight_ih,                // [4H, I]
    const Tensor& weight_hh,                // [4H, R]
    const c10::optional<Tensor>& weight_peephole,  // [3, H]
    const c10::optional<Tensor>& weight_proj,      // [R, H]
    const c10::optional<Tensor>& lengths,   // [B] int64
    const Tensor& gates,                    // [T, B, 4H]
    const Tensor& hidden_states,            // [T+1, B, R]
    const Tensor& cell_states,              // [T+1, B, H]
    bool reverse, c10::string_view activation, bool need_grad_input,
    const PeepholeStepKernels& kernels);

// The registered ops of one device. Backend provides `kernels` (PeepholeStepKernels),
// `check_input(op, input)` (supported dtypes and device) and a device `Guard` type.
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_forward_op(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
    const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& weight_peephole,
    const c10::optional<Tensor>& weight_proj, const c10::optional<Tensor>& lengths, bool reverse,
    c10::string_view activation, bool training) {
  Backend::check_input("tlstm.peephole_lstm_forward", input);
  const typename Backend::Guard guard(input.device());
  const KernelScope scope{};
  return peephole_lstm_forward_driver(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                      weight_peephole, weight_proj, lengths, reverse, activation,
                                      training, Backend::kernels);
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
peephole_lstm_backward_op(const Tensor& grad_output, const Tensor& grad_h_n,
                          const Tensor& grad_c_n, const Tensor& input, const Tensor& weight_ih,
                          const Tensor& weight_hh, const c10::optional<Tensor>& weight_peephole,
                          const c10::optional<Tensor>& weight_proj,
                          const c10::optional<Tensor>& lengths, const Tensor& gates,
                          const Tensor& hidden_states, const Tensor& cell_states, bool reverse,
                          c10::string_view activation, bool need_grad_input) {
  Backend::check_input("tlstm.peephole_lstm_backward", input);
  const typename Backend::Guard guard(input.device());
  const KernelScope scope{};
  return peephole_lstm_backward_driver(grad_output, grad_h_n, grad_c_n, input, weight_ih,
                                       weight_hh, weight_peephole, weight_proj, lengths, gates,
                                       hidden_states, cell_states, reverse, activation,
                                       need_grad_input, Backend::kernels);
}

}  // namespace tlstm
