// Sequence driver of the peephole LSTM, shared by every device (see peephole_lstm.h).
#include "peephole_lstm.h"

#include <ATen/OpMathType.h>

#include <algorithm>

#include "checks.h"
#include "tensor_utils.h"

namespace tlstm {

Activation parse_activation(c10::string_view name) {
  if (name == "tanh") return Activation::Tanh;
  if (name == "identity") return Activation::Identity;
  TORCH_CHECK(false, "tlstm: activation must be \"tanh\" or \"identity\", got \"", name, "\"");
}

namespace {

constexpr const char* kForward = "tlstm.peephole_lstm_forward";
constexpr const char* kBackward = "tlstm.peephole_lstm_backward";

struct PeepholeSizes {
  int64_t T, B, I, H, R;
};

// Validates the arguments both ops share and returns the sizes they imply.
PeepholeSizes check_peephole_args(const char* op, const Tensor& input, const Tensor& weight_ih,
                                  const Tensor& weight_hh,
                                  const c10::optional<Tensor>& weight_peephole,
                                  const c10::optional<Tensor>& weight_proj,
                                  const c10::optional<Tensor>& lengths) {
  TORCH_CHECK(input.dim() == 3, op, ": expected input of 3 dimensions [T, B, I], got ",
              input.dim());
  TORCH_CHECK(input.is_floating_point(), op, ": expected a floating-point input, got ",
              input.scalar_type());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) > 0 && weight_hh.size(0) % 4 == 0, op,
              ": expected weight_hh of shape [4H, R] with H > 0, got ",
              shape_string(weight_hh.sizes()));
  PeepholeSizes s;
  s.T = input.size(0);
  s.B = input.size(1);
  s.I = input.size(2);
  s.H = weight_hh.size(0) / 4;
  s.R = weight_hh.size(1);
  check_same_dtype_device(op, "weight_ih", weight_ih, input);
  check_same_dtype_device(op, "weight_hh", weight_hh, input);
  check_shape(op, "weight_ih", weight_ih, {4 * s.H, s.I}, "[4H, I]");
  if (weight_peephole.has_value()) {
    check_same_dtype_device(op, "weight_peephole", *weight_peephole, input);
    check_shape(op, "weight_peephole", *weight_peephole, {3, s.H}, "[3, H]");
  }
  if (weight_proj.has_value()) {
    check_same_dtype_device(op, "weight_proj", *weight_proj, input);
    check_shape(op, "weight_proj", *weight_proj, {s.R, s.H}, "[R, H]");
  } else {
    TORCH_CHECK(s.R == s.H, op, ": without weight_proj, weight_hh must be [4H, H] = ",
                shape_string({4 * s.H, s.H}), ", got ", shape_string(weight_hh.sizes()));
  }
  if (lengths.has_value()) check_lengths(op, *lengths, input, s.B, s.T);
  return s;
}

// [3, H]: the peephole weights, or zeros, which make the cell exactly the LSTM's.
Tensor peephole_or_zeros(const c10::optional<Tensor>& weight_peephole, const Tensor& input,
                         int64_t H) {
  return weight_peephole.has_value() ? weight_peephole->contiguous()
                                     : at::zeros({3, H}, input.options());
}

// Time index and slots of step s (see StepSlots); its gates at slot t (gate_first: the first
// step the gates buffer holds, when it holds a chunk).
StepSlots step_slots(int64_t s, int64_t T, bool reverse, bool whole_history,
                     int64_t gate_first = 0) {
  StepSlots slots;
  slots.t = reverse ? T - 1 - s : s;
  slots.gate = slots.t - gate_first;
  if (whole_history) {
    slots.prev = reverse ? slots.t + 1 : slots.t;
    slots.next = reverse ? slots.t : slots.t + 1;
  } else {
    slots.prev = s % 2;
    slots.next = (s + 1) % 2;
  }
  return slots;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_forward_driver(
    const Tensor& input_, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih_,
    const Tensor& weight_hh_, const c10::optional<Tensor>& bias_ih,
    const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& weight_peephole,
    const c10::optional<Tensor>& weight_proj_, const c10::optional<Tensor>& lengths,
    bool reverse, c10::string_view activation, bool training,
    const PeepholeStepKernels& kernels) {
  const auto sz = check_peephole_args(kForward, input_, weight_ih_, weight_hh_, weight_peephole,
                                      weight_proj_, lengths);
  const int64_t T = sz.T, B = sz.B, I = sz.I, H = sz.H, R = sz.R;
  check_same_dtype_device(kForward, "h0", h0, input_);
  check_same_dtype_device(kForward, "c0", c0, input_);
  check_shape(kForward, "h0", h0, {B, R}, "[B, R]");
  check_shape(kForward, "c0", c0, {B, H}, "[B, H]");
  for (const auto* bias : {&bias_ih, &bias_hh}) {
    if (bias->has_value()) {
      const char* name = bias == &bias_ih ? "bias_ih" : "bias_hh";
      check_same_dtype_device(kForward, name, **bias, input_);
      check_shape(kForward, name, **bias, {4 * H}, "[4H]");
    }
  }

  const Tensor input = input_.contiguous();
  // [I, 4H] and [R, 4H]: transposed once here, because BLAS runs x W^T faster (~10-15% in MKL)
  // with W^T stored row-major than with the transpose flag on W; a backend that packs them
  // (prepare_right_operand, prepare_forward) reads the transposed views as it packs instead,
  // without the copies (on the CPU, 2.5% of an inference call at T=100, B=32, H=256).
  const Tensor weight_ih_t = kernels.prepare_right_operand != nullptr
                                 ? weight_ih_.t()
                                 : weight_ih_.t().contiguous();
  const Tensor weight_proj = contiguous_or_undefined(weight_proj_);
  const bool projected = weight_proj.defined();
  const auto op_math = at::toOpMathType(input.scalar_type());

  PeepholeForwardBuffers buf;
  buf.weight_hh_t =
      kernels.prepare_forward != nullptr ? weight_hh_.t() : weight_hh_.t().contiguous();
  buf.activation = parse_activation(activation);
  buf.peephole = peephole_or_zeros(weight_peephole, input, H);
  buf.lengths = contiguous_or_undefined(lengths);

  // Input projection, gates = x W_ih^T: one GEMM for all steps, or in inference on a chunked
  // backend one per chunk of steps, just before them (into the same [chunk, B, 4H] buffer).
  const int64_t chunk = training ? T : chunk_steps(kernels.inference_chunk_rows, B, T);
  buf.gates = at::empty({chunk, B, 4 * H}, input.options());
  const auto projection = repeated_right_operand(kernels.prepare_right_operand, weight_ih_t);
  // gates of the steps t0 .. t0 + count - 1, into slots 0 .. count - 1
  const auto project = [&](int64_t t0, int64_t count) {
    Tensor out = buf.gates.narrow(0, 0, count).view({count * B, 4 * H});
    projection->matmul_out(out, input.narrow(0, t0, count).view({count * B, I}),
                           /*accumulate=*/false);
  };
  if (chunk == T) project(0, T);
  // b_ih + b_hh, added in the fused pass: cheaper than a GEMM that first copies in the bias.
  buf.bias = bias_ih.has_value() && bias_hh.has_value() ? at::add(*bias_ih, *bias_hh)
             : bias_ih.has_value()                      ? bias_ih->contiguous()
             : bias_hh.has_value()                      ? bias_hh->contiguous()
                                                        : at::zeros({4 * H}, input.options());

  const int64_t slots = training ? T + 1 : 2;
  const int64_t first = (training && reverse) ? T : 0;
  buf.hidden_states = at::empty({slots, B, R}, input.options());
  buf.cell_states = at::empty({slots, B, H}, input.options().dtype(op_math));
  buf.hidden_states.select(0, first).copy_(h0);
  buf.cell_states.select(0, first).copy_(c0);
  buf.output = at::empty({T, B, R}, input.options());
  if (projected) buf.hidden_pre = at::empty({B, H}, input.options());
  // With a projection the driver finishes each step: [T, B, 1] masks of the running rows.
  const Tensor active =
      buf.lengths.defined() && projected ? active_mask(buf.lengths, T) : Tensor();
  const Tensor active_scale = active.defined() ? active.to(input.scalar_type()) : Tensor();

  const int64_t last = T > 0 ? step_slots(T - 1, T, reverse, training).next : first;
  const bool whole_sequence = T > 0 && !projected && chunk == T &&
                              kernels.forward_sequence != nullptr &&
                              kernels.forward_sequence(buf, T, reverse, training);
  if (!whole_sequence && kernels.prepare_forward != nullptr) kernels.prepare_forward(buf);
  int64_t gate_first = 0;  // the first time step whose gates the buffer holds
  for (int64_t s = 0; s < T && !whole_sequence; ++s) {
    if (chunk < T && s % chunk == 0) {  // the chunk of steps s .. s + count - 1
      const int64_t count = std::min(chunk, T - s);
      gate_first = reverse ? T - s - count : s;
      project(gate_first, count);
    }
    const StepSlots step = step_slots(s, T, reverse, training, gate_first);
    kernels.forward_step(buf, step);
    if (projected) {
      // h_t = m_t W_hr^T; rows past their sequence's end keep the previous state.
      auto hidden_next = buf.hidden_states.select(0, step.next);
      at::mm_out(hidden_next, buf.hidden_pre, weight_proj.t());
      auto output_t = buf.output.select(0, step.t);
      if (active.defined()) {
        at::mul_out(output_t, hidden_next, active_scale.select(0, step.t));
        at::where_out(hidden_next, active.select(0, step.t), hidden_next,
                      buf.hidden_states.select(0, step.prev));
      } else {
        output_t.copy_(hidden_next);
      }
    }
  }

  Tensor h_n = buf.hidden_states.select(0, last).clone();
  Tensor c_n = buf.cell_states.select(0, last).to(input.scalar_type(), /*non_blocking=*/false,
                                                  /*copy=*/true);
  if (!training) {
    buf.gates = at::empty({0}, input.options());
    buf.hidden_states = at::empty({0}, input.options());
    buf.cell_states = at::empty({0}, input.options().dtype(op_math));
  }
  return {buf.output, h_n, c_n, buf.gates, buf.hidden_states, buf.cell_states};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
peephole_lstm_backward_driver(const Tensor& grad_output_, const Tensor& grad_h_n,
                              const Tensor& grad_c_n, const Tensor& input_,
                              const Tensor& weight_ih_, const Tensor& weight_hh_,
                              const c10::optional<Tensor>& weight_peephole,
                              const c10::optional<Tensor>& weight_proj_,
                              const c10::optional<Tensor>& lengths, const Tensor& gates_,
                              const Tensor& hidden_states_, const Tensor& cell_states_,
                              bool reverse, c10::string_view activation, bool need_grad_input,
                              const PeepholeStepKernels& kernels) {
  const auto sz = check_peephole_args(kBackward, input_, weight_ih_, weight_hh_, weight_peephole,
                                      weight_proj_, lengths);
  const int64_t T = sz.T, B = sz.B, I = sz.I, H = sz.H, R = sz.R;
  const auto op_math = at::toOpMathType(input_.scalar_type());
  check_same_dtype_device(kBackward, "grad_output", grad_output_, input_);
  check_same_dtype_device(kBackward, "grad_h_n", grad_h_n, input_);
  check_same_dtype_device(kBackward, "grad_c_n", grad_c_n, input_);
  check_same_dtype_device(kBackward, "gates", gates_, input_);
  check_same_dtype_device(kBackward, "hidden_states", hidden_states_, input_);
  check_shape(kBackward, "grad_output", grad_output_, {T, B, R}, "[T, B, R]");
  check_shape(kBackward, "grad_h_n", grad_h_n, {B, R}, "[B, R]");
  check_shape(kBackward, "grad_c_n", grad_c_n, {B, H}, "[B, H]");
  check_shape(kBackward, "gates", gates_, {T, B, 4 * H}, "[T, B, 4H]");
  check_shape(kBackward, "hidden_states", hidden_states_, {T + 1, B, R}, "[T+1, B, R]");
  check_shape(kBackward, "cell_states", cell_states_, {T + 1, B, H}, "[T+1, B, H]");
  check_op_math_buffer(kBackward, "cell_states", cell_states_, input_);

  const Tensor input = input_.contiguous();
  const Tensor weight_proj = contiguous_or_undefined(weight_proj_);
  const Tensor hidden_states = hidden_states_.contiguous();
  const bool projected = weight_proj.defined();

  PeepholeBackwardBuffers buf;
  buf.weight_hh = weight_hh_.contiguous();
  buf.activation = parse_activation(activation);
  buf.peephole = peephole_or_zeros(weight_peephole, input, H);
  buf.lengths = contiguous_or_undefined(lengths);
  buf.gates = gates_.contiguous();
  buf.cell_states = cell_states_.contiguous();
  buf.grad_output = grad_output_.contiguous();
  buf.grad_cell = grad_c_n.to(op_math, /*non_blocking=*/false, /*copy=*/true).contiguous();
  buf.grad_gates = at::empty({T, B, 4 * H}, input.options());
  buf.grad_peephole_rows = at::zeros({weight_peephole.has_value() ? B : 0, 3 * H},
                                     input.options().dtype(op_math));
  // dL/dh of the state after the current step, alternating between two buffers.
  Tensor grad_hidden[2] = {grad_h_n.contiguous().clone(), at::empty({B, R}, input.options())};
  Tensor grad_hidden_total;  // [T, B, R] with a projection: dL/dh_t of every step
  if (projected) {
    grad_hidden_total = at::empty({T, B, R}, input.options());
    buf.grad_hidden_pre = at::empty({B, H}, input.options());
    buf.hidden_pre_all = at::empty({T, B, H}, input.options());
  }
  const Tensor active_scale = buf.lengths.defined() && projected
                                  ? active_mask(buf.lengths, T).to(input.scalar_type())
                                  : Tensor();

  int current = 0;
  buf.grad_hidden = grad_hidden[0];
  buf.grad_hidden_next = grad_hidden[1];
  const bool whole_sequence = T > 0 && !projected && kernels.backward_sequence != nullptr &&
                              kernels.backward_sequence(buf, T, reverse);
  if (whole_sequence) current = 1;
  if (!whole_sequence && kernels.prepare_backward != nullptr) kernels.prepare_backward(buf);
  for (int64_t s = T - 1; s >= 0 && !whole_sequence; --s) {
    const StepSlots step = step_slots(s, T, reverse, /*whole_history=*/true);
    buf.grad_hidden = grad_hidden[current];
    buf.grad_hidden_next = grad_hidden[1 - current];
    if (projected) {
      // dL/dh_t in full (zero past the sequence's end), then back through the projection.
      auto total_t = grad_hidden_total.select(0, step.t);
      at::add_out(total_t, buf.grad_hidden, buf.grad_output.select(0, step.t));
      if (active_scale.defined()) total_t.mul_(active_scale.select(0, step.t));
      at::mm_out(buf.grad_hidden_pre, total_t, weight_proj);
    }
    kernels.backward_step(buf, step);
    current = 1 - current;
  }

  // Weight gradients of all steps, as GEMMs after the loop.
  const auto grad_gates_2d = buf.grad_gates.view({T * B, 4 * H});
  Tensor grad_input = need_grad_input
                          ? matmul(kernels.matmul_out, grad_gates_2d, weight_ih_).view({T, B, I})
                                      : at::empty({0}, input.options());
  // (zeros past each length: padding that is not finite, NaN, stays out as zero padding does)
  const Tensor read_input =
      buf.lengths.defined() ? input.masked_fill(active_mask(buf.lengths, T).logical_not(), 0) : input;
  // dW = dG^T x as (x^T dG)^T: the backend's products transpose the narrow x and h, not dG,
  // and read dG once for both
  const auto hidden_prev = hidden_states.narrow(0, reverse ? 1 : 0, T).reshape({T * B, R});
  Tensor grad_weight_ih, grad_weight_hh, grad_bias;  // [4H, I], [4H, R], [4H]
  if (kernels.matmul_rows_out == nullptr) {
    grad_weight_ih = at::mm(grad_gates_2d.t(), read_input.view({T * B, I}));
    grad_weight_hh = at::mm(grad_gates_2d.t(), hidden_prev);
    grad_bias = grad_gates_2d.sum(0);
  } else {
    // and the bias's, 1^T dG, from the same pass (not another one over dG from memory)
    const Tensor ones = at::ones({T * B, 1}, grad_gates_2d.options());
    const auto grads = matmul_t(kernels.matmul_rows_out,
                                {read_input.view({T * B, I}), hidden_prev, ones},
                                grad_gates_2d);  // [I, 4H], [R, 4H], [1, 4H]
    grad_weight_ih = grads[0].t().contiguous();
    grad_weight_hh = grads[1].t().contiguous();
    grad_bias = grads[2].view({4 * H});
  }
  Tensor grad_weight_peephole =
      weight_peephole.has_value()
          ? buf.grad_peephole_rows.sum(0).view({3, H}).to(input.scalar_type())
          : at::empty({0}, input.options());
  Tensor grad_weight_proj =
      projected ? at::mm(grad_hidden_total.view({T * B, R}).t(), buf.hidden_pre_all.view({T * B, H}))
                : at::empty({0}, input.options());
  Tensor grad_c0 = buf.grad_cell.to(input.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  return {grad_input,     grad_hidden[current], grad_c0,   grad_weight_ih, grad_weight_hh,
          grad_bias,      grad_weight_peephole, grad_weight_proj};
}

}  // namespace tlstm
