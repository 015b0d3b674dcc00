// CPU backend of the peephole LSTM ops: the fused element-wise pass of one step, parallel over
// batch rows, plugged into the shared sequence driver.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../peephole_lstm.h"

namespace tlstm {
namespace {

// Rows of one task: enough cell elements per task that a thread's start-up cost is small.
int64_t rows_per_task(int64_t H) {
  constexpr int64_t kElementsPerTask = 2048;
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(H, 1));
}

inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

template <typename scalar_t, class Act, bool kProjected>
void forward_step_kernel(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.hidden_states.size(2);
  scalar_t* gates = buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H;        // [B, 4H]
  const scalar_t* cell_prev = buf.cell_states.data_ptr<scalar_t>() + step.prev * B * H;
  scalar_t* cell_next = buf.cell_states.data_ptr<scalar_t>() + step.next * B * H;  // [B, H]
  const scalar_t* hidden_prev = buf.hidden_states.data_ptr<scalar_t>() + step.prev * B * R;
  scalar_t* hidden_next = buf.hidden_states.data_ptr<scalar_t>() + step.next * B * R;  // [B, R]
  scalar_t* output = buf.output.data_ptr<scalar_t>() + step.t * B * R;              // [B, R]
  scalar_t* hidden_pre = kProjected ? buf.hidden_pre.data_ptr<scalar_t>() : nullptr;  // [B, H]
  const scalar_t* peephole = buf.peephole.defined() ? buf.peephole.data_ptr<scalar_t>() : nullptr;
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  at::parallel_for(0, B, rows_per_task(H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* a = gates + b * 4 * H;
      const scalar_t* c_prev = cell_prev + b * H;
      scalar_t* c_next = cell_next + b * H;
      if (!row_active(lengths, b, step.t)) {  // past the sequence's end: the state stays
        for (int64_t j = 0; j < H; ++j) c_next[j] = c_prev[j];
        if (kProjected) {
          for (int64_t j = 0; j < H; ++j) hidden_pre[b * H + j] = 0;
        } else {
          for (int64_t j = 0; j < R; ++j) {
            hidden_next[b * R + j] = hidden_prev[b * R + j];
            output[b * R + j] = 0;
          }
        }
        continue;
      }
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t w_ci = peephole ? peephole[j] : scalar_t(0);
        const scalar_t w_cf = peephole ? peephole[H + j] : scalar_t(0);
        const scalar_t w_co = peephole ? peephole[2 * H + j] : scalar_t(0);
        const auto s = peephole_cell_forward<Act>(a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                                  c_prev[j], w_ci, w_cf, w_co);
        a[j] = s.i;
        a[H + j] = s.f;
        a[2 * H + j] = s.g;
        a[3 * H + j] = s.o;
        c_next[j] = s.c;
        if (kProjected) {
          hidden_pre[b * H + j] = s.m;
        } else {
          hidden_next[b * R + j] = s.m;
          output[b * R + j] = s.m;
        }
      }
    }
  });
}

template <typename scalar_t, class Act, bool kProjected>
void backward_step_kernel(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.grad_output.size(2);
  const scalar_t* gates = buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H;  // [B, 4H]
  const scalar_t* cell_prev = buf.cell_states.data_ptr<scalar_t>() + step.prev * B * H;
  const scalar_t* cell = buf.cell_states.data_ptr<scalar_t>() + step.next * B * H;  // [B, H]
  const scalar_t* grad_output = buf.grad_output.data_ptr<scalar_t>() + step.t * B * R;
  const scalar_t* grad_hidden = buf.grad_hidden.data_ptr<scalar_t>();            // [B, R]
  const scalar_t* grad_hidden_pre =
      kProjected ? buf.grad_hidden_pre.data_ptr<scalar_t>() : nullptr;            // [B, H]
  scalar_t* hidden_pre_all =
      kProjected ? buf.hidden_pre_all.data_ptr<scalar_t>() + step.t * B * H : nullptr;
  scalar_t* grad_cell = buf.grad_cell.data_ptr<scalar_t>();                       // [B, H]
  scalar_t* grad_gates = buf.grad_gates.data_ptr<scalar_t>() + step.t * B * 4 * H;
  const scalar_t* peephole = buf.peephole.defined() ? buf.peephole.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_peephole = peephole ? buf.grad_peephole_rows.data_ptr<scalar_t>() : nullptr;
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  at::parallel_for(0, B, rows_per_task(H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* g = gates + b * 4 * H;
      scalar_t* da = grad_gates + b * 4 * H;
      if (!row_active(lengths, b, step.t)) {  // past the sequence's end: dL/dc passes through
        for (int64_t k = 0; k < 4 * H; ++k) da[k] = 0;
        if (kProjected) {
          for (int64_t j = 0; j < H; ++j) hidden_pre_all[b * H + j] = 0;
        }
        continue;
      }
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t w_ci = peephole ? peephole[j] : scalar_t(0);
        const scalar_t w_cf = peephole ? peephole[H + j] : scalar_t(0);
        const scalar_t w_co = peephole ? peephole[2 * H + j] : scalar_t(0);
        const scalar_t grad_m = kProjected ? grad_hidden_pre[b * H + j]
                                           : grad_hidden[b * R + j] + grad_output[b * R + j];
        const scalar_t c = cell[b * H + j], c_prev = cell_prev[b * H + j];
        const scalar_t o = g[3 * H + j];
        const auto d = peephole_cell_backward<Act>(g[j], g[H + j], g[2 * H + j], o, c, c_prev,
                                                   w_ci, w_cf, w_co, grad_m, grad_cell[b * H + j]);
        da[j] = d.a_i;
        da[H + j] = d.a_f;
        da[2 * H + j] = d.a_g;
        da[3 * H + j] = d.a_o;
        grad_cell[b * H + j] = d.c_prev;
        if (peephole) {
          scalar_t* gp = grad_peephole + b * 3 * H;
          gp[j] += d.a_i * c_prev;
          gp[H + j] += d.a_f * c_prev;
          gp[2 * H + j] += d.a_o * c;
        }
        if (kProjected) hidden_pre_all[b * H + j] = o * Act::value(c);
      }
    }
  });
}

// Picks the kernel instance for the runtime dtype, activation and projection.
template <template <typename, class, bool> class Kernel, class Buffers>
void dispatch_step(const Buffers& buf, const StepSlots& step, const Tensor& typed,
                   bool projected) {
  AT_DISPATCH_FLOATING_TYPES(typed.scalar_type(), "tlstm_peephole_step_cpu", [&] {
    if (buf.activation == Activation::Tanh) {
      projected ? Kernel<scalar_t, TanhActivation, true>::run(buf, step)
                : Kernel<scalar_t, TanhActivation, false>::run(buf, step);
    } else {
      projected ? Kernel<scalar_t, IdentityActivation, true>::run(buf, step)
                : Kernel<scalar_t, IdentityActivation, false>::run(buf, step);
    }
  });
}

template <typename scalar_t, class Act, bool kProjected>
struct ForwardStep {
  static void run(const PeepholeForwardBuffers& buf, const StepSlots& step) {
    forward_step_kernel<scalar_t, Act, kProjected>(buf, step);
  }
};

template <typename scalar_t, class Act, bool kProjected>
struct BackwardStep {
  static void run(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
    backward_step_kernel<scalar_t, Act, kProjected>(buf, step);
  }
};

void forward_step_cpu(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  dispatch_step<ForwardStep>(buf, step, buf.gates, buf.hidden_pre.defined());
}

void backward_step_cpu(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  dispatch_step<BackwardStep>(buf, step, buf.gates, buf.grad_hidden_pre.defined());
}

constexpr PeepholePointwiseKernels kCpuKernels{forward_step_cpu, backward_step_cpu};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_forward_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
    const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& weight_peephole,
    const c10::optional<Tensor>& weight_proj, const c10::optional<Tensor>& lengths, bool reverse,
    c10::string_view activation, bool training) {
  check_floating("tlstm.peephole_lstm_forward", input, {at::kFloat, at::kDouble}, "CPU");
  return peephole_lstm_forward_driver(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                      weight_peephole, weight_proj, lengths, reverse, activation,
                                      training, kCpuKernels);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
peephole_lstm_backward_cpu(const Tensor& grad_output, const Tensor& grad_h_n,
                           const Tensor& grad_c_n, const Tensor& input, const Tensor& weight_ih,
                           const Tensor& weight_hh, const c10::optional<Tensor>& weight_peephole,
                           const c10::optional<Tensor>& weight_proj,
                           const c10::optional<Tensor>& lengths, const Tensor& gates,
                           const Tensor& hidden_states, const Tensor& cell_states, bool reverse,
                           c10::string_view activation, bool need_grad_input) {
  check_floating("tlstm.peephole_lstm_backward", input, {at::kFloat, at::kDouble}, "CPU");
  return peephole_lstm_backward_driver(grad_output, grad_h_n, grad_c_n, input, weight_ih,
                                       weight_hh, weight_peephole, weight_proj, lengths, gates,
                                       hidden_states, cell_states, reverse, activation,
                                       need_grad_input, kCpuKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CPU, m) {
  m.impl("peephole_lstm_forward", &peephole_lstm_forward_cpu);
  m.impl("peephole_lstm_backward", &peephole_lstm_backward_cpu);
}

}  // namespace tlstm
