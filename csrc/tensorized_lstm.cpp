// Sequence driver of the tensorized LSTM, shared by every device (see tensorized_lstm.h).
#include "tensorized_lstm.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "checks.h"
#include "tensor_utils.h"

namespace tlstm {

namespace {
constexpr const char* kForward = "tlstm.tensorized_lstm_forward";
constexpr const char* kBackward = "tlstm.tensorized_lstm_backward";

// W_col [K'*M, G], W_col[k*M + m, o] = weight_hh[o, m, k]: rows k*M .. k*M + M are tap k's
// weight W_k [M, G].
Tensor unfolded_weight(const Tensor& weight_hh, const TensorizedSizes& n) {
  return weight_hh.permute({2, 1, 0}).reshape({n.taps * n.M, n.G}).contiguous();
}

Tensor tap_weight(const Tensor& weight_col, const TensorizedSizes& n, int64_t k) {
  return weight_col.narrow(0, k * n.M, n.M);  // [M, G]
}

// The hidden rows [first, first + count) (1-based) whose tap k reads Hcat rows from
// `lowest` on (rows first + d, ..., d = k - c): with lowest = 1 the taps that read hidden rows,
// with lowest = 0 also the one that reads the input row. Taps past row P are zero: never here.
struct TapRows {
  int64_t d, first, count;
};

TapRows tap_rows(const TensorizedSizes& n, int64_t k, int64_t lowest) {
  const int64_t d = k - n.c;
  const int64_t first = std::max<int64_t>(1, lowest - d), last = std::min(n.P, n.P - d);
  return {d, first, std::max<int64_t>(0, last - first + 1)};
}

// The taps that read hidden rows, tap c (d = 0, every row) first: its product initializes the
// step's sums, the others add to theirs. Each with its weight, prepared once per call.
struct RecurrentTap {
  TapRows rows;
  std::unique_ptr<RepeatedRightOperand> weight;
};

std::vector<RecurrentTap> recurrent_taps(const TensorizedSizes& n, PrepareRightOperand prepare,
                                         const std::function<Tensor(int64_t)>& weight_of) {
  std::vector<RecurrentTap> taps;
  for (int64_t i = 0; i < n.taps; ++i) {
    const int64_t k = i == 0 ? n.c : (i <= n.c ? i - 1 : i);
    const TapRows rows = tap_rows(n, k, 1);
    if (rows.count > 0) taps.push_back({rows, repeated_right_operand(prepare, weight_of(k))});
  }
  return taps;
}

// Rows [first, first + count) of a [rows, B, X] tensor seen as [rows * B, X] (contiguous).
Tensor row_block(const Tensor& t, int64_t first, int64_t count) {
  const int64_t B = t.size(1);
  return t.view({t.size(0) * B, t.size(2)}).narrow(0, first * B, count * B);
}

// The input rows' term of A for hidden rows 1..c' (c' = min(c, P)), every step: [c', S, B, G].
Tensor input_row_terms(const TensorizedForwardBuffers& buf, const Tensor& weight_col,
                       MatmulOut matmul_out_backend) {
  const auto& n = buf.n;
  const int64_t rows = std::min(n.c, n.P);
  Tensor terms = at::empty({rows, n.S, n.B, n.G}, buf.x_in.options());
  const Tensor x_in = buf.x_in.view({n.S * n.B, n.M});
  for (int64_t p = 1; p <= rows; ++p) {  // hidden row p reads the input row by tap c - p
    Tensor out = terms.select(0, p - 1).view({n.S * n.B, n.G});
    matmul_out(matmul_out_backend, out, x_in, tap_weight(weight_col, n, n.c - p));
  }
  return terms;
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
  buf.bias_hh = bias_hh.has_value() ? bias_hh->contiguous() : at::zeros({n.G}, options);
  // The input rows of all steps: one GEMM for x~ = x W_ih^T; b_ih alone past each length.
  Tensor x_proj = matmul(kernels.matmul_out, input.view({n.T * n.B, n.I}), weight_ih.t())
                      .view({n.T, n.B, n.M});
  if (buf.lengths.defined()) {
    const auto real = at::arange(n.T, buf.lengths.options()).unsqueeze(1).lt(buf.lengths.unsqueeze(0));
    x_proj.mul_(real.unsqueeze(2).to(x_proj.scalar_type()));
  }
  // (a copy: with S = B = 1 the expanded bias already counts as contiguous, and add_ below
  // would write into the parameter)
  buf.x_in = bias_ih.has_value()
                 ? bias_ih->expand({n.S, n.B, n.M}).clone(at::MemoryFormat::Contiguous)
                 : at::zeros({n.S, n.B, n.M}, options);
  buf.x_in.narrow(0, 0, n.T).add_(x_proj);
  const Tensor weight_col = unfolded_weight(weight_hh, n);  // [K'*M, G]
  // The taps that read the input row, for all steps at once (they do not depend on the state).
  buf.input_pre = input_row_terms(buf, weight_col, kernels.matmul_out);
  buf.zero_gates = at::zeros({n.G}, options);

  const int64_t slots = training ? n.S : 1;
  buf.hcat = at::empty({training ? n.S + 1 : 2, n.P + 1, n.B, n.M}, options);
  buf.pre = at::empty({n.P, n.B, n.G}, options);
  buf.cells = at::empty({training ? n.S + 1 : 2, n.P, n.B, n.M}, op_math);
  buf.gates = at::empty({slots, n.P, n.B, 4 * n.M}, options);
  buf.q = at::empty({n.memory_conv ? slots : 0, n.P, n.B, n.K}, options);
  buf.norm_hat = at::empty({n.channel_norm ? slots : 0, n.P, n.B, 5, n.M}, op_math);
  buf.norm_rstd = at::empty({n.channel_norm ? slots : 0, n.P, n.B, 5}, op_math);
  buf.output = at::empty({n.T, n.B, n.M}, options);
  if (training) {  // the input rows, kept for the weight gradients (slot S has none); in
                   // inference nothing reads row 0
    buf.hcat.narrow(0, 0, n.S).select(1, 0).copy_(buf.x_in);
    buf.hcat.select(0, n.S).select(0, 0).zero_();
  }
  buf.hcat.select(0, 0).narrow(0, 1, n.P).copy_(h0.transpose(0, 1));
  buf.cells.select(0, 0).copy_(c0.transpose(0, 1));
  // The rows overwrite these at each sequence's last input step (never, where it is 0).
  // (copies: the rows write into them, and a transposed h0 may already be contiguous)
  buf.state_hidden = h0.transpose(0, 1).clone(at::MemoryFormat::Contiguous);
  buf.state_cell = c0.transpose(0, 1).to(op_math, /*non_blocking=*/false, /*copy=*/true,
                                         at::MemoryFormat::Contiguous);

  if (kernels.forward_sequence == nullptr || !kernels.forward_sequence(buf, weight_col)) {
    const auto taps = recurrent_taps(n, kernels.prepare_right_operand,
                                     [&](int64_t k) { return tap_weight(weight_col, n, k); });
    for (int64_t s = 0; s < n.S; ++s) {
      const Tensor hcat_s = buf.hcat.select(0, training ? s : s % 2);  // [P+1, B, M]
      for (size_t i = 0; i < taps.size(); ++i) {
        const TapRows& t = taps[i].rows;
        Tensor out = row_block(buf.pre, t.first - 1, t.count);
        taps[i].weight->matmul_out(out, row_block(hcat_s, t.first + t.d, t.count),
                                   /*accumulate=*/i > 0);
      }
      kernels.forward_rows(buf, s);
    }
  }

  Tensor h_n = buf.state_hidden.transpose(0, 1).contiguous();
  Tensor c_n = buf.state_cell.transpose(0, 1).contiguous().to(input.scalar_type());
  if (!training) {
    buf.hcat = at::empty({0}, options);
    buf.gates = at::empty({0}, options);
    buf.q = at::empty({0}, options);
    buf.norm_hat = at::empty({0}, op_math);
    buf.norm_rstd = at::empty({0}, op_math);
    buf.cells = at::empty({0}, op_math);
  }
  return {buf.output, h_n, c_n, buf.hcat, buf.gates, buf.q, buf.norm_hat, buf.norm_rstd,
          buf.cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
tensorized_lstm_backward_driver(const Tensor& grad_output, const Tensor& grad_h_n,
                                const Tensor& grad_c_n, const Tensor& input_,
                                const Tensor& weight_ih, const Tensor& weight_hh,
                                const c10::optional<Tensor>& norm_weight,
                                const c10::optional<Tensor>& norm_bias,
                                const c10::optional<Tensor>& lengths, const Tensor& hcat,
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
        {"weight_hh", &weight_hh}, {"hcat", &hcat}, {"gates", &gates}, {"q", &q}}) {
    check_same_dtype_device(kBackward, name, *t, input_);
  }
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"norm_hat", &norm_hat},
                                {"norm_rstd", &norm_rstd}, {"cells", &cells}}) {
    check_op_math_buffer(kBackward, name, *t, input_);
  }
  check_shape(kBackward, "grad_output", grad_output, {n.T, n.B, n.M}, "[T, B, M]");
  check_shape(kBackward, "grad_c_n", grad_c_n, {n.B, n.P, n.M}, "[B, P, M]");
  check_shape(kBackward, "weight_ih", weight_ih, {n.M, n.I}, "[M, I]");
  check_shape(kBackward, "hcat", hcat, {n.S + 1, n.P + 1, n.B, n.M}, "[S+1, P+1, B, M]");
  check_shape(kBackward, "gates", gates, {n.S, n.P, n.B, 4 * n.M}, "[S, P, B, 4M]");
  check_shape(kBackward, "q", q, {n.memory_conv ? n.S : 0, n.P, n.B, n.K}, "[S, P, B, K]");
  check_shape(kBackward, "norm_hat", norm_hat, {n.channel_norm ? n.S : 0, n.P, n.B, 5, n.M},
              "[S, P, B, 5, M]");
  check_shape(kBackward, "norm_rstd", norm_rstd, {n.channel_norm ? n.S : 0, n.P, n.B, 5},
              "[S, P, B, 5]");
  check_shape(kBackward, "cells", cells, {n.S + 1, n.P, n.B, n.M}, "[S+1, P, B, M]");
  if (lengths.has_value()) check_lengths(kBackward, *lengths, input_, n.B, n.T);

  const Tensor input = input_.contiguous();
  TensorizedBackwardBuffers buf;
  buf.n = n;
  buf.hcat = hcat.contiguous();
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
  buf.grad_state_hidden = grad_h_n.transpose(0, 1).to(op_math).contiguous();
  buf.grad_state_cell = grad_c_n.transpose(0, 1).to(op_math).contiguous();
  buf.grad_hidden = at::zeros({2, n.P, n.B, n.M}, op_math);
  buf.grad_cell = at::zeros({2, n.P, n.B, n.M}, op_math);
  buf.grad_pre = at::empty({n.S, n.P, n.B, n.G}, options);
  buf.grad_cconv = at::empty({n.P, n.B, n.M}, op_math);
  buf.grad_taps = at::empty({n.P, n.B, n.M}, options);
  buf.grad_norm_rows = at::zeros({n.channel_norm ? n.P : 0, n.B, 10, n.M}, op_math);
  buf.row_scratch = at::empty({n.P, n.B, 3, n.M}, op_math);
  const Tensor weight_col = unfolded_weight(weight_hh, n);  // [K'*M, G]
  // W_k^T [G, M] of tap k: dA sent back through the tap (a GEMM on a row-major operand).
  const auto tap_weight_t = [&](int64_t k) { return tap_weight(weight_col, n, k).t().contiguous(); };

  if (kernels.backward_sequence == nullptr || !kernels.backward_sequence(buf, weight_col)) {
    const auto taps = recurrent_taps(n, kernels.prepare_right_operand, tap_weight_t);
    int64_t cur = 0;
    for (int64_t s = n.S - 1; s >= 0; --s) {
      kernels.backward_rows(buf, s, cur);
      const Tensor grad_pre_s = buf.grad_pre.select(0, s);  // [P, B, G]
      for (size_t i = 0; i < taps.size(); ++i) {  // dL/dH_{s-1} = sum of dA W_k^T, by tap
        const TapRows& t = taps[i].rows;
        Tensor out = row_block(buf.grad_taps, t.first + t.d - 1, t.count);
        taps[i].weight->matmul_out(out, row_block(grad_pre_s, t.first - 1, t.count),
                                   /*accumulate=*/i > 0);
      }
      kernels.gather_rows(buf, s, cur);
      cur = 1 - cur;
    }
  }
  const int64_t cur = n.S % 2;  // the slot of dL/dH_0, dL/dC_0 after S steps

  // The input rows' gradient, dL/dx_in [S, B, M]: from hidden rows 1..c' through their taps.
  Tensor grad_x_in = at::zeros({n.S, n.B, n.M}, options);
  for (int64_t p = 1; p <= std::min(n.c, n.P); ++p) {
    const Tensor grad_pre_p = buf.grad_pre.select(1, p - 1).reshape({n.S * n.B, n.G});
    grad_x_in.view({n.S * n.B, n.M}).add_(matmul(kernels.matmul_out, grad_pre_p, tap_weight_t(n.c - p)));
  }
  // Parameter gradients of all steps, as GEMMs after the loop: tap k's weight from the Hcat
  // rows it read (the input row included) against the rows' dA.
  Tensor grad_weight_col = at::zeros({n.taps, n.M, n.G}, options);
  for (int64_t k = 0; k < n.taps; ++k) {
    const TapRows t = tap_rows(n, k, 0);
    if (t.count == 0) continue;
    const Tensor read = buf.hcat.narrow(0, 0, n.S).narrow(1, t.first + t.d, t.count)
                            .reshape({n.S * t.count * n.B, n.M});
    const Tensor grad = buf.grad_pre.narrow(1, t.first - 1, t.count)
                            .reshape({n.S * t.count * n.B, n.G});
    grad_weight_col.select(0, k).copy_(matmul(kernels.matmul_out, read.t(), grad));
  }
  Tensor grad_weight_hh = grad_weight_col.permute({2, 1, 0}).contiguous();  // [G, M, K']
  Tensor grad_bias_hh = buf.grad_pre.view({-1, n.G}).sum(0);
  // The input row of step s is x~_s + b_ih while s < lengths[b] (and s < T), else b_ih alone.
  Tensor grad_bias_ih = grad_x_in.sum(at::IntArrayRef{0, 1});
  Tensor grad_x_proj = grad_x_in.narrow(0, 0, n.T);
  if (buf.lengths.defined()) {
    const auto real = at::arange(n.T, buf.lengths.options()).unsqueeze(1).lt(buf.lengths.unsqueeze(0));
    grad_x_proj = grad_x_proj * real.unsqueeze(2).to(grad_x_proj.scalar_type());
  }
  const auto grad_x_proj_2d = grad_x_proj.reshape({n.T * n.B, n.M});
  Tensor grad_input = need_grad_input
                          ? matmul(kernels.matmul_out, grad_x_proj_2d, weight_ih).view({n.T, n.B, n.I})
                          : at::empty({0}, options);
  Tensor grad_weight_ih = matmul(kernels.matmul_out, grad_x_proj_2d.t(), input.view({n.T * n.B, n.I}));
  Tensor grad_norm_weight = at::empty({0}, options), grad_norm_bias = at::empty({0}, options);
  if (n.channel_norm) {
    const auto sums = buf.grad_norm_rows.sum(at::IntArrayRef{0, 1}).to(input.scalar_type());  // [10, M]
    grad_norm_weight = sums.narrow(0, 0, 5).clone();  // clones: outputs must not share storage
    grad_norm_bias = sums.narrow(0, 5, 5).clone();
  }
  Tensor grad_h0 = buf.grad_hidden.select(0, cur);  // [P, B, M]
  Tensor grad_c0 = buf.grad_cell.select(0, cur);
  if (buf.lengths.defined()) {  // a sequence of length 0 returns its initial state as it is
    const auto unread = buf.lengths.eq(0).view({1, n.B, 1}).to(grad_h0.scalar_type());
    grad_h0 = grad_h0 + buf.grad_state_hidden * unread;
    grad_c0 = grad_c0 + buf.grad_state_cell * unread;
  }
  grad_h0 = grad_h0.transpose(0, 1).contiguous().to(input.scalar_type(), false, true);
  grad_c0 = grad_c0.transpose(0, 1).contiguous().to(input.scalar_type(), false, true);
  return {grad_input,     grad_h0,      grad_c0,          grad_weight_ih, grad_bias_ih,
          grad_weight_hh, grad_bias_hh, grad_norm_weight, grad_norm_bias};
}

}  // namespace tlstm
