// Sequence driver of the tensorized LSTM, shared by every device (see tensorized_lstm.h).
#include "tensorized_lstm.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "checks.h"
#include "tensor_utils.h"

namespace tlstm {

namespace {
constexpr const char* kForward = "tlstm.tensorized_lstm_forward";
constexpr const char* kBackward = "tlstm.tensorized_lstm_backward";

// W_col [K'^axes*M, G], W_col[k*M + m, o] = weight_hh[o, m, k] with k the tap's index among
// weight_hh's flattened taps (k1 * K' + k2 on the plane): rows k*M .. k*M + M are tap k's
// weight W_k [M, G].
Tensor unfolded_weight(const Tensor& weight_hh, const TensorizedSizes& n) {
  return weight_hh.flatten(2).permute({2, 1, 0}).reshape({n.tap_count * n.M, n.G}).contiguous();
}

// W_k [M, G] = weight_hh[:, :, k]^T (k1 * K' + k2 on the plane): a view, which the backends'
// prepared operands read as it is (the CPU packs it without a transposed copy first).
Tensor tap_weight(const Tensor& weight_hh, int64_t k) {
  return weight_hh.flatten(2).select(2, k).t();
}

// A run of locations that one tap maps onto another run: locations dst .. dst + count - 1 read
// src .. src + count - 1 (0-based location indices, l - 1).
struct TapBlock {
  int64_t dst, src, count;
};

// The hidden locations [first, last] (1-based) along one axis whose tap offset d stays inside
// 1..P.
std::pair<int64_t, int64_t> axis_range(const TensorizedSizes& n, int64_t d) {
  return {std::max<int64_t>(1, 1 - d), std::min(n.P, n.P - d)};
}

// Where tap k reads a hidden location: its runs of locations. One run on rows; on the plane
// one per row of the plane, or a single one where the tap keeps the column (k2 = c).
std::vector<TapBlock> hidden_blocks(const TensorizedSizes& n, int64_t k) {
  const int64_t d1 = (n.axes == 1 ? k : k / n.taps) - n.c;
  const int64_t d2 = n.axes == 1 ? 0 : k % n.taps - n.c;
  const auto [first1, last1] = axis_range(n, d1);
  if (last1 < first1) return {};
  if (n.axes == 1) return {{first1 - 1, first1 - 1 + d1, last1 - first1 + 1}};
  const auto [first2, last2] = axis_range(n, d2);
  if (last2 < first2) return {};
  if (d2 == 0) return {{(first1 - 1) * n.P, (first1 - 1 + d1) * n.P, (last1 - first1 + 1) * n.P}};
  std::vector<TapBlock> blocks;
  for (int64_t p1 = first1; p1 <= last1; ++p1) {
    const int64_t dst = (p1 - 1) * n.P + first2 - 1;
    blocks.push_back({dst, dst + d1 * n.P + d2, last2 - first2 + 1});
  }
  return blocks;
}

// The locations that read the input (Hcat's location 0), by input slot (input_slot of
// tensorized_lstm_row.h): 0-based location and the tap that reads it.
struct InputRead {
  int64_t location, tap;
};

std::vector<InputRead> input_reads(const TensorizedSizes& n) {
  const int64_t corner = std::min(n.c, n.P);
  std::vector<InputRead> reads;
  if (n.axes == 1) {
    for (int64_t p = 1; p <= corner; ++p) reads.push_back({p - 1, n.c - p});
  } else {
    for (int64_t p1 = 1; p1 <= corner; ++p1) {
      for (int64_t p2 = 1; p2 <= corner; ++p2) {
        reads.push_back({(p1 - 1) * n.P + p2 - 1, (n.c - p1) * n.taps + n.c - p2});
      }
    }
  }
  return reads;
}

// The taps that read hidden locations, the centre tap (offset 0, every location) first: its
// product initializes the step's sums, the others add to theirs. Each with its weight,
// prepared once per call.
struct RecurrentTap {
  std::vector<TapBlock> blocks;
  std::unique_ptr<RepeatedRightOperand> weight;
};

std::vector<RecurrentTap> recurrent_taps(const TensorizedSizes& n, PrepareRightOperand prepare,
                                         const std::function<Tensor(int64_t)>& weight_of) {
  const int64_t centre = n.axes == 1 ? n.c : n.c * n.taps + n.c;
  std::vector<RecurrentTap> taps;
  for (int64_t i = 0; i < n.tap_count; ++i) {
    const int64_t k = i == 0 ? centre : (i <= centre ? i - 1 : i);
    auto blocks = hidden_blocks(n, k);
    if (!blocks.empty()) {
      taps.push_back({std::move(blocks), repeated_right_operand(prepare, weight_of(k))});
    }
  }
  return taps;
}

// Whether the input's term of A is computed from x directly, through the folded weights
// W_ih^T W_k [I, G] of the taps that read it (x~ W_k = x (W_ih^T W_k)): in inference, where
// nothing reads x~ itself, on a backend that asks for it, and where it costs fewer
// multiply-adds than the projection followed by the taps (folding the weights included). At
// depth 1 with I = M = 128, T = 100, B = 16 (the bench's), it skips 7% of the forward's
// multiply-adds.
bool fold_input_projection(const TensorizedSizes& n, int64_t slots, bool training,
                           bool backend_folds) {
  if (training || !backend_folds || slots == 0) return false;
  const double rows = double(n.S) * double(n.B), I = double(n.I), M = double(n.M),
               G = double(n.G), s = double(slots);
  const double folded = s * I * M * G + rows * s * I * G;
  const double projected = rows * I * M + rows * s * M * G;
  return folded < projected;
}

// The input rows of the steps, x_in = x~_s + b_ih while s < T_b and b_ih after (x~ = x W_ih^T),
// and their term of A at the locations that read them (input_pre), for a chunk of steps at a
// time (or all of them at once): into buffers of the chunk's size, reused chunk after chunk.
// Folded (fold_input_projection), the term is x_s (W_ih^T W_k) + b_ih W_k while s < T_b and
// b_ih W_k after, and x~ is never formed.
class InputChunks {
 public:
  InputChunks(const TensorizedSizes& n, const Tensor& input, const Tensor& weight_ih,
              const c10::optional<Tensor>& bias_ih, const Tensor& lengths,
              const Tensor& weight_hh, int64_t chunk, bool training,
              const TensorizedStepKernels& kernels)
      : n_(n), input_(input), reads_(input_reads(n)),
        folded_(fold_input_projection(n, int64_t(reads_.size()), training,
                                      kernels.fold_input_projection)) {
    if (lengths.defined()) unread_ = active_mask(lengths, n.T).logical_not();
    const auto prepare = kernels.prepare_right_operand;
    const Tensor weight_ih_t = weight_ih.t();  // [I, M]
    if (!folded_) {
      if (bias_ih.has_value()) bias_ih_ = *bias_ih;
      projection_ = repeated_right_operand(prepare, weight_ih_t);
      x_in_ = at::empty({chunk, n.B, n.M}, input.options());
    }
    // Folded: [W_ih^T; b_ih] W_k [I (+1), G], the folded weight W_ih^T W_k and as its last row
    // the bias's term b_ih W_k, in one product (W_k packed once).
    const Tensor stacked = folded_ && bias_ih.has_value()
                               ? at::cat({weight_ih_t, bias_ih->view({1, n.M})})  // [I+1, M]
                               : weight_ih_t;
    for (const InputRead& read : reads_) {
      const Tensor w_k = tap_weight(weight_hh, read.tap);  // [M, G]
      if (!folded_) {
        taps_.push_back(repeated_right_operand(prepare, w_k));
        continue;
      }
      const Tensor product = matmul(kernels.matmul_out, stacked, w_k);
      taps_.push_back(repeated_right_operand(prepare, product.narrow(0, 0, n.I)));
      if (bias_ih.has_value()) bias_terms_.push_back(product.select(0, n.I));
    }
  }
  int64_t slots() const { return int64_t(reads_.size()); }

  // Steps s0 .. s0 + count - 1: their terms into input_pre's first count steps, and when
  // training their input rows into Hcat's location 0 (which the weight gradients read).
  void compute(TensorizedForwardBuffers& buf, int64_t s0, int64_t count) {
    const int64_t real = std::clamp<int64_t>(n_.T - s0, 0, count);
    buf.input_first = s0;
    if (folded_) {
      for (size_t slot = 0; slot < taps_.size(); ++slot) {
        Tensor out = buf.input_pre.select(0, int64_t(slot)).narrow(0, 0, count);  // [count, B, G]
        terms(out, taps_[slot], input_, n_.I, s0, real);
        if (!bias_terms_.empty()) out.add_(bias_terms_[slot]);
      }
      return;
    }
    Tensor x = x_in_.narrow(0, 0, count);  // [count, B, M]
    terms(x, projection_, input_, n_.I, s0, real);
    if (bias_ih_.defined()) x.add_(bias_ih_);
    const Tensor rows = x.view({count * n_.B, n_.M});
    for (size_t slot = 0; slot < taps_.size(); ++slot) {
      Tensor out = buf.input_pre.select(0, int64_t(slot)).narrow(0, 0, count).view({count * n_.B, n_.G});
      taps_[slot]->matmul_out(out, rows, /*accumulate=*/false);
    }
    if (buf.training) buf.hcat.narrow(0, s0, count).select(1, 0).copy_(x);
  }

 private:
  // out [count, B, X] = the rows of x [T, B, K] of steps s0 .. s0 + real - 1 times w, zeros
  // past each length and from step real on.
  void terms(Tensor& out, const std::unique_ptr<RepeatedRightOperand>& w, const Tensor& x,
             int64_t K, int64_t s0, int64_t real) const {
    const int64_t B = n_.B, count = out.size(0), X = out.size(2);
    if (real > 0) {
      Tensor rows = out.narrow(0, 0, real).view({real * B, X});
      w->matmul_out(rows, x.narrow(0, s0, real).view({real * B, K}), /*accumulate=*/false);
      if (unread_.defined()) out.narrow(0, 0, real).masked_fill_(unread_.narrow(0, s0, real), 0);
    }
    if (real < count) out.narrow(0, real, count - real).zero_();
  }

  const TensorizedSizes& n_;
  Tensor input_;                 // [T, B, I]
  std::vector<InputRead> reads_;
  bool folded_;
  std::unique_ptr<RepeatedRightOperand> projection_;        // W_ih^T [I, M] (not folded)
  // by input slot: W_k [M, G], or folded W_ih^T W_k [I, G]
  std::vector<std::unique_ptr<RepeatedRightOperand>> taps_;
  Tensor bias_ih_;               // [M] or undefined (not folded)
  std::vector<Tensor> bias_terms_;  // folded: b_ih W_k [G] by input slot, or none
  // [T, B, 1] bool, true past each length, or undefined (no lengths). The input there is never
  // read: its products are filled with zeros (so that padding that is not finite, NaN, stays
  // out of the results as zero padding does).
  Tensor unread_;
  Tensor x_in_;                  // [chunk, B, M] (not folded)
};

// The shape of h0 and the other states: [B, P, M] or [B, P, P, M].
std::vector<int64_t> state_shape(const TensorizedSizes& n) {
  return n.axes == 1 ? std::vector<int64_t>{n.B, n.P, n.M}
                     : std::vector<int64_t>{n.B, n.P, n.P, n.M};
}
const char* state_letters(const TensorizedSizes& n) {
  return n.axes == 1 ? "[B, P, M]" : "[B, P, P, M]";
}

// A state [B, P, M] or [B, P, P, M] as the kernels' [N, B, M] (a view where it can be one), and
// back.
Tensor locations_first(const Tensor& state, const TensorizedSizes& n) {
  return state.reshape({n.B, n.N, n.M}).transpose(0, 1);
}
Tensor state_of(const Tensor& locations, const TensorizedSizes& n) {
  return locations.transpose(0, 1).contiguous().view(state_shape(n));
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
  TORCH_CHECK(weight_hh.dim() == 3 || weight_hh.dim() == 4, op,
              ": expected weight_hh of shape [G, M, K'] (the 2-D cell) or [G, M, K', K'] (the "
              "3-D cell), got ", shape_string(weight_hh.sizes()));
  TensorizedSizes n;
  n.axes = weight_hh.dim() - 2;
  TORCH_CHECK(h0.dim() == n.axes + 2, op, ": expected h0 of shape ",
              n.axes == 1 ? "[B, P, M]" : "[B, P, P, M]", " for weight_hh of shape ",
              shape_string(weight_hh.sizes()), ", got ", shape_string(h0.sizes()));
  n.T = input.size(0);
  n.B = input.size(1);
  n.I = input.size(2);
  n.M = h0.size(-1);
  n.K = kernel_size;
  n.c = (kernel_size - 1) / 2;
  n.L = depth;
  n.P = (depth - 1) * n.c + 1;
  n.taps = feedback ? n.K : n.c + 1;
  n.N = n.axes == 1 ? n.P : n.P * n.P;
  n.tap_count = n.axes == 1 ? n.taps : n.taps * n.taps;
  n.Kq = memory_taps(weight_hh, kernel_size);
  n.G = 4 * n.M + (memory_conv ? n.Kq : 0);
  n.delay = flush ? depth - 1 : 0;
  n.S = n.T + n.delay;
  n.channel_norm = channel_norm;
  n.memory_conv = memory_conv;
  n.flush = flush;
  TORCH_CHECK(n.M > 0, op, ": expected a hidden size M > 0, got h0 of shape ",
              shape_string(h0.sizes()));
  check_shape(op, "h0", h0, state_shape(n),
              (std::string(state_letters(n)) + " with P = (depth-1)*(kernel_size-1)/2+1").c_str());
  check_shape(op, "weight_hh", weight_hh,
              n.axes == 1 ? std::vector<int64_t>{n.G, n.M, n.taps}
                          : std::vector<int64_t>{n.G, n.M, n.taps, n.taps},
              n.axes == 1 ? "[G, M, K']" : "[G, M, K', K']");
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
  check_shape(kForward, "c0", c0, state_shape(n), state_letters(n));
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
  // [K'^axes*M, G], for a backend that runs the whole sequence itself (the steps read the taps'
  // views of weight_hh)
  const Tensor weight_col =
      kernels.forward_sequence != nullptr ? unfolded_weight(weight_hh, n) : Tensor();
  // The input rows and the taps that read them do not depend on the state: one GEMM each for
  // all steps, or per chunk of steps on a chunked backend.
  const int64_t chunk = chunk_steps(kernels.input_chunk_rows, n.B, n.S);
  InputChunks inputs(n, input, weight_ih, bias_ih, buf.lengths, weight_hh, chunk, training,
                     kernels);
  buf.input_pre = at::empty({inputs.slots(), chunk, n.B, n.G}, options);
  buf.zero_gates = at::zeros({n.G}, options);

  const int64_t slots = training ? n.S : 1;
  buf.hcat = at::empty({training ? n.S + 1 : 2, n.N + 1, n.B, n.M}, options);
  buf.pre = at::empty({n.N, n.B, n.G}, options);
  buf.cells = at::empty({training ? n.S + 1 : 2, n.N, n.B, n.M}, op_math);
  buf.gates = at::empty({slots, n.N, n.B, 4 * n.M}, options);
  buf.q = at::empty({n.memory_conv ? slots : 0, n.N, n.B, n.Kq}, options);
  buf.norm_hat = at::empty({n.channel_norm ? slots : 0, n.N, n.B, 5, n.M}, op_math);
  buf.norm_rstd = at::empty({n.channel_norm ? slots : 0, n.N, n.B, 5}, op_math);
  buf.output = at::empty({n.T, n.B, n.M}, options);
  // (training: slot S's input row is never read; in inference nothing reads location 0)
  if (training) buf.hcat.select(0, n.S).select(0, 0).zero_();
  buf.hcat.select(0, 0).narrow(0, 1, n.N).copy_(locations_first(h0, n));
  buf.cells.select(0, 0).copy_(locations_first(c0, n));
  // The rows overwrite these at each sequence's last input step (never, where it is 0).
  // (copies: the rows write into them, and a transposed h0 may already be contiguous)
  buf.state_hidden = locations_first(h0, n).clone(at::MemoryFormat::Contiguous);
  buf.state_cell = locations_first(c0, n).to(op_math, /*non_blocking=*/false, /*copy=*/true,
                                             at::MemoryFormat::Contiguous);

  if (chunk == n.S) inputs.compute(buf, 0, n.S);
  if (chunk < n.S || kernels.forward_sequence == nullptr ||
      !kernels.forward_sequence(buf, weight_col)) {
    const auto taps = recurrent_taps(n, kernels.prepare_right_operand,
                                     [&](int64_t k) { return tap_weight(weight_hh, k); });
    const Tensor pre_rows = buf.pre.view({n.N * n.B, n.G});  // [N*B, G]
    const Tensor hcat_rows = buf.hcat.view({-1, n.M});         // [(S+1 or 2)*(N+1)*B, M]
    for (int64_t s = 0; s < n.S; ++s) {
      if (chunk < n.S && s % chunk == 0) inputs.compute(buf, s, std::min(chunk, n.S - s));
      const int64_t hcat_s = (training ? s : s % 2) * (n.N + 1) * n.B;  // Hcat_{s-1}'s first row
      for (size_t i = 0; i < taps.size(); ++i) {
        for (const TapBlock& t : taps[i].blocks) {  // A's locations dst.. += H's src.. W_k
          taps[i].weight->matmul_block_out(pre_rows, t.dst * n.B, hcat_rows,
                                           hcat_s + (1 + t.src) * n.B, t.count * n.B,
                                           /*accumulate=*/i > 0);
        }
      }
      kernels.forward_rows(buf, s);
    }
  }

  Tensor h_n = state_of(buf.state_hidden, n);
  Tensor c_n = state_of(buf.state_cell, n).to(input.scalar_type());
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
  if (input_.dim() == 3 && weight_ih.dim() == 2 && depth >= 1 && kernel_size >= 3 &&
      (weight_hh.dim() == 3 || weight_hh.dim() == 4)) {
    const int64_t P = (depth - 1) * ((kernel_size - 1) / 2) + 1;
    const bool plane = weight_hh.dim() == 4;
    check_shape(kBackward, "grad_h_n", grad_h_n,
                plane ? std::vector<int64_t>{input_.size(1), P, P, weight_ih.size(0)}
                      : std::vector<int64_t>{input_.size(1), P, weight_ih.size(0)},
                plane ? "[B, P, P, M]" : "[B, P, M]");
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
  check_shape(kBackward, "grad_c_n", grad_c_n, state_shape(n), state_letters(n));
  check_shape(kBackward, "weight_ih", weight_ih, {n.M, n.I}, "[M, I]");
  check_shape(kBackward, "hcat", hcat, {n.S + 1, n.N + 1, n.B, n.M}, "[S+1, N+1, B, M]");
  check_shape(kBackward, "gates", gates, {n.S, n.N, n.B, 4 * n.M}, "[S, N, B, 4M]");
  check_shape(kBackward, "q", q, {n.memory_conv ? n.S : 0, n.N, n.B, n.Kq}, "[S, N, B, Kq]");
  check_shape(kBackward, "norm_hat", norm_hat, {n.channel_norm ? n.S : 0, n.N, n.B, 5, n.M},
              "[S, N, B, 5, M]");
  check_shape(kBackward, "norm_rstd", norm_rstd, {n.channel_norm ? n.S : 0, n.N, n.B, 5},
              "[S, N, B, 5]");
  check_shape(kBackward, "cells", cells, {n.S + 1, n.N, n.B, n.M}, "[S+1, N, B, M]");
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
  buf.grad_state_hidden = locations_first(grad_h_n, n).to(op_math).contiguous();
  buf.grad_state_cell = locations_first(grad_c_n, n).to(op_math).contiguous();
  buf.grad_hidden = at::zeros({2, n.N, n.B, n.M}, op_math);
  buf.grad_cell = at::zeros({2, n.N, n.B, n.M}, op_math);
  buf.grad_pre = at::empty({n.S, n.N, n.B, n.G}, options);
  buf.grad_cconv = at::empty({n.N, n.B, n.M}, op_math);
  buf.grad_taps = at::empty({n.N, n.B, n.M}, options);
  buf.grad_norm_rows = at::zeros({n.channel_norm ? n.N : 0, n.B, 10, n.M}, op_math);
  buf.row_scratch = at::empty({n.N, n.B, 3, n.M}, op_math);
  const Tensor weight_col =  // [K'^axes*M, G], for a backend that runs the whole sequence
      kernels.backward_sequence != nullptr ? unfolded_weight(weight_hh, n) : Tensor();
  // W_k^T [G, M] of tap k (a view of weight_hh): dA sent back through the tap.
  const auto tap_weight_t = [&](int64_t k) { return tap_weight(weight_hh, k).t(); };

  if (kernels.backward_sequence == nullptr || !kernels.backward_sequence(buf, weight_col)) {
    const auto taps = recurrent_taps(n, kernels.prepare_right_operand, tap_weight_t);
    const Tensor grad_taps_rows = buf.grad_taps.view({n.N * n.B, n.M});  // [N*B, M]
    const Tensor grad_pre_rows = buf.grad_pre.view({-1, n.G});            // [S*N*B, G]
    int64_t cur = 0;
    for (int64_t s = n.S - 1; s >= 0; --s) {
      kernels.backward_rows(buf, s, cur);
      const int64_t grad_pre_s = s * n.N * n.B;  // step s's first row
      for (size_t i = 0; i < taps.size(); ++i) {  // dL/dH_{s-1} = sum of dA W_k^T, by tap
        for (const TapBlock& t : taps[i].blocks) {
          taps[i].weight->matmul_block_out(grad_taps_rows, t.src * n.B, grad_pre_rows,
                                           grad_pre_s + t.dst * n.B, t.count * n.B,
                                           /*accumulate=*/i > 0);
        }
      }
      kernels.gather_rows(buf, s, cur);
      cur = 1 - cur;
    }
  }
  const int64_t cur = n.S % 2;  // the slot of dL/dH_0, dL/dC_0 after S steps

  // The input's gradient, dL/dx_in [S, B, M]: from the locations that read it, through their
  // taps.
  const auto reads = input_reads(n);
  Tensor grad_x_in = at::zeros({n.S, n.B, n.M}, options);
  for (const InputRead& read : reads) {
    const Tensor grad_pre_l = buf.grad_pre.select(1, read.location).reshape({n.S * n.B, n.G});
    grad_x_in.view({n.S * n.B, n.M}).add_(matmul(kernels.matmul_out, grad_pre_l, tap_weight_t(read.tap)));
  }
  // Parameter gradients of all steps, as GEMMs after the loop: tap k's weight from the Hcat
  // locations it read (the input included) against the dA of the locations that read them, one
  // product per tap over those rows of every step (runs of rows: a run of locations of one step;
  // on the CPU without copies, each row read once for all the taps).
  Tensor grad_weight_col = at::empty({n.tap_count, n.M, n.G}, options);
  std::vector<RowsProduct> products;
  for (int64_t k = 0; k < n.tap_count; ++k) {
    std::vector<TapBlock> blocks;  // the input as location -1 (Hcat's location 0)
    for (const InputRead& read : reads) {
      if (read.tap == k) blocks.push_back({read.location, -1, 1});
    }
    for (const TapBlock& t : hidden_blocks(n, k)) blocks.push_back(t);
    RowsProduct product{grad_weight_col.select(0, k), {}};  // [M, G]
    product.runs.reserve(n.S * blocks.size());
    for (int64_t s = 0; s < n.S; ++s) {
      for (const TapBlock& t : blocks) {  // Hcat's rows, dA's rows
        product.runs.push_back(
            {(s * (n.N + 1) + 1 + t.src) * n.B, (s * n.N + t.dst) * n.B, t.count * n.B});
      }
    }
    products.push_back(std::move(product));
  }
  matmul_rows_out(kernels.matmul_rows_out, kernels.prepare_right_operand, products,
                  buf.hcat.view({-1, n.M}),        // [(S+1)*(N+1)*B, M]
                  buf.grad_pre.view({-1, n.G}));   // [S*N*B, G]
  Tensor grad_weight_hh = grad_weight_col.permute({2, 1, 0}).reshape(weight_hh.sizes()).contiguous();
  Tensor grad_bias_hh = buf.grad_pre.view({-1, n.G}).sum(0);
  // The input row of step s is x~_s + b_ih while s < lengths[b] (and s < T), else b_ih alone.
  Tensor grad_bias_ih = grad_x_in.sum(at::IntArrayRef{0, 1});
  Tensor grad_x_proj = grad_x_in.narrow(0, 0, n.T);
  Tensor read_input = input;  // [T, B, I]: zeros past each length
  if (buf.lengths.defined()) {
    const Tensor unread = active_mask(buf.lengths, n.T).logical_not();
    grad_x_proj = grad_x_proj.masked_fill(unread, 0);
    read_input = input.masked_fill(unread, 0);
  }
  const auto grad_x_proj_2d = grad_x_proj.reshape({n.T * n.B, n.M});
  Tensor grad_input = need_grad_input
                          ? matmul(kernels.matmul_out, grad_x_proj_2d, weight_ih).view({n.T, n.B, n.I})
                          : at::empty({0}, options);
  Tensor grad_weight_ih =  // [M, I]
      matmul_t(kernels.matmul_rows_out, grad_x_proj_2d, read_input.view({n.T * n.B, n.I}));
  Tensor grad_norm_weight = at::empty({0}, options), grad_norm_bias = at::empty({0}, options);
  if (n.channel_norm) {
    const auto sums = buf.grad_norm_rows.sum(at::IntArrayRef{0, 1}).to(input.scalar_type());  // [10, M]
    grad_norm_weight = sums.narrow(0, 0, 5).clone();  // clones: outputs must not share storage
    grad_norm_bias = sums.narrow(0, 5, 5).clone();
  }
  Tensor grad_h0 = buf.grad_hidden.select(0, cur);  // [N, B, M]
  Tensor grad_c0 = buf.grad_cell.select(0, cur);
  if (buf.lengths.defined()) {  // a sequence of length 0 returns its initial state as it is
    const auto unread = buf.lengths.eq(0).view({1, n.B, 1}).to(grad_h0.scalar_type());
    grad_h0 = grad_h0 + buf.grad_state_hidden * unread;
    grad_c0 = grad_c0 + buf.grad_state_cell * unread;
  }
  grad_h0 = state_of(grad_h0, n).to(input.scalar_type(), false, true);
  grad_c0 = state_of(grad_c0, n).to(input.scalar_type(), false, true);
  return {grad_input,     grad_h0,      grad_c0,          grad_weight_ih, grad_bias_ih,
          grad_weight_hh, grad_bias_hh, grad_norm_weight, grad_norm_bias};
}

}  // namespace tlstm
