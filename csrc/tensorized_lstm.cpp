// Sequence driver of the tensorized LSTM, shared by every device (see tensorized_lstm.h).
#include "tensorized_lstm.h"

#include <ATen/OpMathType.h>

#include "checks.h"
#include "tensor_utils.h"

namespace tlstm {

namespace {
constexpr const char* kForward = "tlstm.tensorized_lstm_forward";
constexpr const char* kBackward = "tlstm.tensorized_lstm_backward";

// W_col [K'*M, G], W_col[k*M + m, o] = weight_hh[o, m, k]: the step GEMM's right operand.
Tensor unfolded_weight(const Tensor& weight_hh, const TensorizedSizes& n) {
  return weight_hh.permute({2, 1, 0}).reshape({n.taps * n.M, n.G}).contiguous();
}
}  // namespace

TensorizedSizes tensorized_sizes(const char* op, const Tensor& input, const Tensor& h0,
                                 const Tensor& weight_hh, const c10::optional<Tensor>& norm_weight,
                                 const c10::optional<Tensor>& norm_bias, int64_t depth,
                                 int64_t kernel_size, bool feedback, bool memory_conv, bool flush) {
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value(), op,
              ": norm_weight and norm_bias go together");
  const bool channel_norm = norm_weight.has_value();
  TORCH_CHECK(input.dim() == 3, op, ": expected input of 3 dimensions [T, B, I], got ",
              input.dim());
  TORCH_CHECK(input.is_floating_point(), op, ": expected a floating-point input, got ",
              input.scalar_type());
  TORCH_CHECK(kernel_size >= 3 && kernel_size % 2 == 1, op,
              ": kernel_size must be an odd integer >= 3, got ", kernel_size);
  TORCH_CHECK(depth >= 1, op, ": depth must be >= 1, got ", depth);
  TORCH_CHECK(h0.dim() == 3, op, ": expected h0 of shape [B, P, M], got ",
              shape_string(h0.sizes()));
  TensorizedSizes n;
  n.T = input.size(0);
  n.B = input.size(1);
  n.I = input.size(2);
  n.M = h0.size(2);
  n.K = kernel_size;
  n.c = (kernel_size - 1) / 2;
  n.L = depth;
  n.P = (depth - 1) * n.c + 1;
  n.taps = feedback ? n.K : n.c + 1;
  n.G = 4 * n.M + (memory_conv ? n.K : 0);
  n.delay = flush ? depth - 1 : 0;
  n.S = n.T + n.delay;
  n.channel_norm = channel_norm;
  n.memory_conv = memory_conv;
  n.flush = flush;
  TORCH_CHECK(n.M > 0, op, ": expected a hidden size M > 0, got h0 of shape ",
              shape_string(h0.sizes()));
  check_shape(op, "h0", h0, {n.B, n.P, n.M}, "[B, P, M] with P = (depth-1)*(kernel_size-1)/2+1");
  check_shape(op, "weight_hh", weight_hh, {n.G, n.M, n.taps}, "[G, M, K']");
  if (channel_norm) {
    for (const auto& [name, t] :
         {std::pair<const char*, const Tensor*>{"norm_weight", &*norm_weight},
          {"norm_bias", &*norm_bias}}) {
      check_same_dtype_device(op, name, *t, input);
      check_shape(op, name, *t, {5, n.M}, "[5, M]");
    }
  }
  return n;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_forward_driver(const Tensor& input_, const Tensor& h0, const Tensor& c0,
                               const Tensor& weight_ih, const c10::optional<Tensor>& bias_ih,
                               const Tensor& weight_hh, const c10::optional<Tensor>& bias_hh,
                               const c10::optional<Tensor>& norm_weight,
                               const c10::optional<Tensor>& norm_bias,
                               const c10::optional<Tensor>& lengths, int64_t depth,
                               int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
                               bool training, const TensorizedStepKernels& kernels) {
  const auto n = tensorized_sizes(kForward, input_, h0, weight_hh, norm_weight, norm_bias, depth,
                                  kernel_size, feedback, memory_conv, flush);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"h0", &h0}, {"c0", &c0},
                                {"weight_ih", &weight_ih}, {"weight_hh", &weight_hh}}) {
    check_same_dtype_device(kForward, name, *t, input_);
  }
  check_shape(kForward, "c0", c0, {n.B, n.P, n.M}, "[B, P, M]");
  check_shape(kForward, "weight_ih", weight_ih, {n.M, n.I}, "[M, I]");
  if (bias_ih.has_value()) {
    check_same_dtype_device(kForward, "bias_ih", *bias_ih, input_);
    check_shape(kForward, "bias_ih", *bias_ih, {n.M}, "[M]");
  }
  if (bias_hh.has_value()) {
    check_same_dtype_device(kForward, "bias_hh", *bias_hh, input_);
    check_shape(kForward, "bias_hh", *bias_hh, {n.G}, "[G]");
  }
  if (lengths.has_value()) check_lengths(kForward, *lengths, input_, n.B, n.T);

  const Tensor input = input_.contiguous();
  const auto options = input.options();
  const auto op_math = options.dtype(at::toOpMathType(input.scalar_type()));
  TensorizedForwardBuffers buf;
  buf.n = n;
  buf.training = training;
  buf.lengths = contiguous_or_undefined(lengths);
  buf.norm_weight = contiguous_or_undefined(norm_weight);
  buf.norm_bias = contiguous_or_undefined(norm_bias);
  buf.bias_ih = bias_ih.has_value() ? bias_ih->contiguous() : at::zeros({n.M}, options);
  buf.bias_hh = bias_hh.has_value() ? bias_hh->contiguous() : at::zeros({n.G}, options);
  // The input projection of all steps, one GEMM (b_ih is added when the input row is built).
  buf.input_proj = matmul(kernels.matmul_out, input.view({n.T * n.B, n.I}), weight_ih.t())
                       .view({n.T, n.B, n.M});
  const Tensor weight_col = unfolded_weight(weight_hh, n);  // [K'*M, G]

  const int64_t slots = training ? n.S : 1;
  buf.x_col = at::empty({slots, n.B, n.P, n.taps, n.M}, options);
  buf.pre = at::empty({n.B, n.P, n.G}, options);
  buf.hidden = at::empty({2, n.B, n.P, n.M}, options);
  buf.cells = at::empty({training ? n.S + 1 : 2, n.B, n.P, n.M}, op_math);
  buf.gates = at::empty({slots, n.B, n.P, 4 * n.M}, options);
  buf.q = at::empty({n.memory_conv ? slots : 0, n.B, n.P, n.K}, options);
  buf.norm_hat = at::empty({n.channel_norm ? slots : 0, n.B, n.P, 5, n.M}, op_math);
  buf.norm_rstd = at::empty({n.channel_norm ? slots : 0, n.B, n.P, 5}, op_math);
  buf.output = at::empty({n.T, n.B, n.M}, options);
  buf.hidden.select(0, 0).copy_(h0);
  buf.cells.select(0, 0).copy_(c0);
  // The rows overwrite these at each sequence's last input step (never, where it is 0).
  buf.state_hidden = h0.clone(at::MemoryFormat::Contiguous);
  buf.state_cell = c0.to(op_math, /*non_blocking=*/false, /*copy=*/true,
                         at::MemoryFormat::Contiguous);

  if (kernels.forward_sequence == nullptr || !kernels.forward_sequence(buf, weight_col)) {
    const auto step_weight = repeated_right_operand(kernels.prepare_right_operand, weight_col);
    auto pre_2d = buf.pre.view({n.B * n.P, n.G});
    for (int64_t s = 0; s < n.S; ++s) {
      kernels.im2col(buf, s);
      const auto x_col_s = buf.x_col.select(0, training ? s : 0).view({n.B * n.P, n.taps * n.M});
      step_weight->matmul_out(pre_2d, x_col_s);
      kernels.forward_rows(buf, s);
    }
  }

  Tensor h_n = buf.state_hidden;
  Tensor c_n = buf.state_cell.to(input.scalar_type());
  if (!training) {
    buf.x_col = at::empty({0}, options);
    buf.gates = at::empty({0}, options);
    buf.q = at::empty({0}, options);
    buf.norm_hat = at::empty({0}, op_math);
    buf.norm_rstd = at::empty({0}, op_math);
    buf.cells = at::empty({0}, op_math);
  }
  return {buf.output, h_n, c_n, buf.x_col, buf.gates, buf.q, buf.norm_hat, buf.norm_rstd,
          buf.cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_backward_driver(const Tensor& grad_output, const Tensor& grad_h_n,
                                const Tensor& grad_c_n, const Tensor& input_,
                                const Tensor& weight_ih, const Tensor& weight_hh,
                                const c10::optional<Tensor>& norm_weight,
                                const c10::optional<Tensor>& norm_bias,
                                const c10::optional<Tensor>& lengths, const Tensor& x_col,
                                const Tensor& gates, const Tensor& q, const Tensor& norm_hat,
                                const Tensor& norm_rstd, const Tensor& cells, int64_t depth,
                                int64_t kernel_size, bool feedback, bool memory_conv, bool flush,
                                bool need_grad_input, const TensorizedStepKernels& kernels) {
  // tensorized_sizes reads the state's sizes from its h0 argument: name grad_h_n here first
  if (input_.dim() == 3 && weight_ih.dim() == 2 && depth >= 1 && kernel_size >= 3) {
    check_shape(kBackward, "grad_h_n", grad_h_n,
                {input_.size(1), (depth - 1) * ((kernel_size - 1) / 2) + 1, weight_ih.size(0)},
                "[B, P, M]");
  }
  const auto n = tensorized_sizes(kBackward, input_, grad_h_n, weight_hh, norm_weight, norm_bias,
                                  depth, kernel_size, feedback, memory_conv, flush);
  const auto options = input_.options();
  const auto op_math = options.dtype(at::toOpMathType(input_.scalar_type()));
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"grad_output", &grad_output},
        {"grad_h_n", &grad_h_n}, {"grad_c_n", &grad_c_n}, {"weight_ih", &weight_ih},
        {"weight_hh", &weight_hh}, {"x_col", &x_col}, {"gates", &gates}, {"q", &q}}) {
    check_same_dtype_device(kBackward, name, *t, input_);
  }
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"norm_hat", &norm_hat},
                                {"norm_rstd", &norm_rstd}, {"cells", &cells}}) {
    check_op_math_buffer(kBackward, name, *t, input_);
  }
  check_shape(kBackward, "grad_output", grad_output, {n.T, n.B, n.M}, "[T, B, M]");
  check_shape(kBackward, "grad_c_n", grad_c_n, {n.B, n.P, n.M}, "[B, P, M]");
  check_shape(kBackward, "weight_ih", weight_ih, {n.M, n.I}, "[M, I]");
  check_shape(kBackward, "x_col", x_col, {n.S, n.B, n.P, n.taps, n.M}, "[S, B, P, K', M]");
  check_shape(kBackward, "gates", gates, {n.S, n.B, n.P, 4 * n.M}, "[S, B, P, 4M]");
  check_shape(kBackward, "q", q, {n.memory_conv ? n.S : 0, n.B, n.P, n.K}, "[S, B, P, K]");
  check_shape(kBackward, "norm_hat", norm_hat, {n.channel_norm ? n.S : 0, n.B, n.P, 5, n.M},
              "[S, B, P, 5, M]");
  check_shape(kBackward, "norm_rstd", norm_rstd, {n.channel_norm ? n.S : 0, n.B, n.P, 5},
              "[S, B, P, 5]");
  check_shape(kBackward, "cells", cells, {n.S + 1, n.B, n.P, n.M}, "[S+1, B, P, M]");
  if (lengths.has_value()) check_lengths(kBackward, *lengths, input_, n.B, n.T);

  const Tensor input = input_.contiguous();
  TensorizedBackwardBuffers buf;
  buf.n = n;
  buf.x_col = x_col.contiguous();
  buf.gates = gates.contiguous();
  buf.q = q.contiguous();
  buf.norm_hat = norm_hat.contiguous();
  buf.norm_rstd = norm_rstd.contiguous();
  buf.cells = cells.contiguous();
  buf.norm_weight = contiguous_or_undefined(norm_weight);
  buf.norm_bias = contiguous_or_undefined(norm_bias);
  buf.lengths = contiguous_or_undefined(lengths);
  buf.grad_output = grad_output.contiguous();
  // dL/dH_n and dL/dC_n enter at each sequence's last input step, not after the last step.
  buf.grad_state_hidden = grad_h_n.to(op_math).contiguous();
  buf.grad_state_cell = grad_c_n.to(op_math).contiguous();
  buf.grad_hidden = at::zeros({2, n.B, n.P, n.M}, op_math);
  buf.grad_cell = at::zeros({2, n.B, n.P, n.M}, op_math);
  buf.grad_pre = at::empty({n.S, n.B, n.P, n.G}, options);
  buf.grad_cconv = at::empty({n.B, n.P, n.M}, op_math);
  buf.grad_col = at::empty({n.B, n.P, n.taps, n.M}, options);
  buf.grad_input_row = at::empty({n.S, n.B, n.M}, options);
  buf.grad_norm_rows = at::zeros({n.channel_norm ? n.B : 0, n.P, 10, n.M}, op_math);
  buf.row_scratch = at::empty({n.B, n.P, 3, n.M}, op_math);
  const Tensor weight_col = unfolded_weight(weight_hh, n);  // [K'*M, G]

  if (kernels.backward_sequence == nullptr || !kernels.backward_sequence(buf, weight_col)) {
    // dX_col = dA W_col^T; the transposed copy makes that a GEMM on a row-major operand.
    const auto weight_col_t =
        repeated_right_operand(kernels.prepare_right_operand, weight_col.t().contiguous());
    int64_t cur = 0;
    auto grad_col_2d = buf.grad_col.view({n.B * n.P, n.taps * n.M});
    for (int64_t s = n.S - 1; s >= 0; --s) {
      kernels.backward_rows(buf, s, cur);
      weight_col_t->matmul_out(grad_col_2d, buf.grad_pre.select(0, s).view({n.B * n.P, n.G}));
      kernels.gather_rows(buf, s, cur);
      cur = 1 - cur;
    }
  }
  const int64_t cur = n.S % 2;  // the slot of dL/dH_0, dL/dC_0 after S steps

  // Parameter gradients of all steps, as GEMMs after the loop.
  const int64_t rows = n.S * n.B * n.P;
  const auto grad_pre_2d = buf.grad_pre.view({rows, n.G});
  Tensor grad_weight_hh = at::mm(buf.x_col.view({rows, n.taps * n.M}).t(), grad_pre_2d)
                              .view({n.taps, n.M, n.G})
                              .permute({2, 1, 0})
                              .contiguous();
  Tensor grad_bias_hh = grad_pre_2d.sum(0);
  // The input row of step s is x~_s + b_ih while s < lengths[b] (and s < T), else b_ih alone.
  Tensor grad_bias_ih = buf.grad_input_row.sum(at::IntArrayRef{0, 1});
  Tensor grad_x_proj = buf.grad_input_row.narrow(0, 0, n.T);
  if (buf.lengths.defined()) {
    const auto real = at::arange(n.T, buf.lengths.options()).unsqueeze(1).lt(buf.lengths.unsqueeze(0));
    grad_x_proj = grad_x_proj * real.unsqueeze(2).to(grad_x_proj.scalar_type());
  }
  const auto grad_x_proj_2d = grad_x_proj.reshape({n.T * n.B, n.M});
  Tensor grad_input = need_grad_input
                          ? matmul(kernels.matmul_out, grad_x_proj_2d, weight_ih).view({n.T, n.B, n.I})
                          : at::empty({0}, options);
  Tensor grad_weight_ih = at::mm(grad_x_proj_2d.t(), input.view({n.T * n.B, n.I}));
  Tensor grad_norm_weight = at::empty({0}, options), grad_norm_bias = at::empty({0}, options);
  if (n.channel_norm) {
    const auto sums = buf.grad_norm_rows.sum(at::IntArrayRef{0, 1}).to(input.scalar_type());  // [10, M]
    grad_norm_weight = sums.narrow(0, 0, 5).clone();  // clones: outputs must not share storage
    grad_norm_bias = sums.narrow(0, 5, 5).clone();
  }
  Tensor grad_h0 = buf.grad_hidden.select(0, cur);
  Tensor grad_c0 = buf.grad_cell.select(0, cur);
  if (buf.lengths.defined()) {  // a sequence of length 0 returns its initial state as it is
    const auto unread = buf.lengths.eq(0).view({n.B, 1, 1}).to(grad_h0.scalar_type());
    grad_h0 = grad_h0 + buf.grad_state_hidden * unread;
    grad_c0 = grad_c0 + buf.grad_state_cell * unread;
  }
  grad_h0 = grad_h0.to(input.scalar_type(), false, true);
  grad_c0 = grad_c0.to(input.scalar_type(), false, true);
  return {grad_input,     grad_h0,      grad_c0,          grad_weight_ih, grad_bias_ih,
          grad_weight_hh, grad_bias_hh, grad_norm_weight, grad_norm_bias};
}

}  // namespace tlstm
