// CUDA backend of the peephole LSTM ops, plugged into the shared sequence driver
// (peephole_lstm.cpp), which runs the input projection and the weight gradients as cuBLAS
// GEMMs through ATen on the current stream.
//
// A step is the recurrent GEMM (cuBLAS through ATen) and one fused element-wise kernel built
// from the same cell math as the CPU (peephole_lstm_cell.h). Inputs may be float32, float64,
// float16 or bfloat16; the cell state and all element-wise arithmetic are in the op-math type
// (float32 for the half types). Every index is 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../peephole_lstm.h"

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
  auto grad_gates_t = buf.grad_gates.select(0, step.t);
  if (B * H > 0) {
    peephole_backward_step_kernel<scalar_t, acc_t, Act, kProjected, kPeephole>
        <<<blocks_for(B * H), kThreads, 0, stream>>>(
            buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H,
            buf.cell_states.data_ptr<acc_t>() + step.next * B * H,
            buf.cell_states.data_ptr<acc_t>() + step.prev * B * H,
            buf.grad_hidden.data_ptr<scalar_t>(),
            buf.grad_output.data_ptr<scalar_t>() + step.t * B * R,
            kProjected ? buf.grad_hidden_pre.data_ptr<scalar_t>() : nullptr,
            buf.grad_cell.data_ptr<acc_t>(), grad_gates_t.data_ptr<scalar_t>(),
            kPeephole ? buf.grad_peephole_rows.data_ptr<acc_t>() : nullptr,
            kProjected ? buf.hidden_pre_all.data_ptr<scalar_t>() + step.t * B * H : nullptr,
            buf.peephole.data_ptr<scalar_t>(), lengths, step.t, B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // dL/dh_{t-1} = dL/da_t W_hh (cuBLAS), then the rows past their end take dL/dh_t unchanged.
  Tensor grad_hidden_next = buf.grad_hidden_next;  // a handle: mm_out writes into its storage
  at::mm_out(grad_hidden_next, grad_gates_t, buf.weight_hh);
  if (lengths != nullptr && B * R > 0) {
    carry_inactive_rows_kernel<scalar_t><<<blocks_for(B * R), kThreads, 0, stream>>>(
        buf.grad_hidden_next.data_ptr<scalar_t>(), buf.grad_hidden.data_ptr<scalar_t>(), lengths,
        step.t, B, R);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---- dispatch and registration -------------------------------------------------------------

template <class Fn>
void dispatch_dtype_activation(const Tensor& typed, Activation activation, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, typed.scalar_type(),
                                  "tlstm_peephole_step_cuda", [&] {
    if (activation == Activation::Tanh) {
      fn(scalar_t{}, TanhActivation{});
    } else {
      fn(scalar_t{}, IdentityActivation{});
    }
  });
}

void forward_step_cuda(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  // a_t += h_{t-1} W_hh^T (cuBLAS), then the element-wise kernel
  auto gates_t = buf.gates.select(0, step.t);
  at::addmm_out(gates_t, gates_t, buf.hidden_states.select(0, step.prev), buf.weight_hh_t);
  const bool projected = buf.hidden_pre.defined();
  dispatch_dtype_activation(buf.gates, buf.activation, [&](auto scalar, auto act) {
    using scalar_t = decltype(scalar);
    using Act = decltype(act);
    projected ? launch_forward_step<scalar_t, Act, true>(buf, step)
              : launch_forward_step<scalar_t, Act, false>(buf, step);
  });
}

void backward_step_cuda(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  const bool projected = buf.grad_hidden_pre.defined();
  const bool peephole = buf.grad_peephole_rows.numel() > 0;
  dispatch_dtype_activation(buf.gates, buf.activation, [&](auto scalar, auto act) {
    using scalar_t = decltype(scalar);
    using Act = decltype(act);
    if (projected) {
      peephole ? launch_backward_step<scalar_t, Act, true, true>(buf, step)
               : launch_backward_step<scalar_t, Act, true, false>(buf, step);
    } else {
      peephole ? launch_backward_step<scalar_t, Act, false, true>(buf, step)
               : launch_backward_step<scalar_t, Act, false, false>(buf, step);
    }
  });
}

constexpr PeepholeStepKernels kCudaKernels{nullptr, forward_step_cuda, nullptr,
                                           backward_step_cuda};

constexpr std::initializer_list<at::ScalarType> kCudaDtypes = {at::kFloat, at::kDouble,
                                                               at::kHalf, at::kBFloat16};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_lstm_forward_cuda(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
    const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& weight_peephole,
    const c10::optional<Tensor>& weight_proj, const c10::optional<Tensor>& lengths, bool reverse,
    c10::string_view activation, bool training) {
  check_floating("tlstm.peephole_lstm_forward", input, kCudaDtypes, "CUDA");
  const c10::cuda::CUDAGuard guard(input.device());
  return peephole_lstm_forward_driver(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                      weight_peephole, weight_proj, lengths, reverse, activation,
                                      training, kCudaKernels);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
peephole_lstm_backward_cuda(const Tensor& grad_output, const Tensor& grad_h_n,
                            const Tensor& grad_c_n, const Tensor& input, const Tensor& weight_ih,
                            const Tensor& weight_hh, const c10::optional<Tensor>& weight_peephole,
                            const c10::optional<Tensor>& weight_proj,
                            const c10::optional<Tensor>& lengths, const Tensor& gates,
                            const Tensor& hidden_states, const Tensor& cell_states, bool reverse,
                            c10::string_view activation, bool need_grad_input) {
  check_floating("tlstm.peephole_lstm_backward", input, kCudaDtypes, "CUDA");
  const c10::cuda::CUDAGuard guard(input.device());
  return peephole_lstm_backward_driver(grad_output, grad_h_n, grad_c_n, input, weight_ih,
                                       weight_hh, weight_peephole, weight_proj, lengths, gates,
                                       hidden_states, cell_states, reverse, activation,
                                       need_grad_input, kCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CUDA, m) {
  m.impl("peephole_lstm_forward", &peephole_lstm_forward_cuda);
  m.impl("peephole_lstm_backward", &peephole_lstm_backward_cuda);
}

}  // namespace tlstm
