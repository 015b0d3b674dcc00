// CPU backend of the peephole LSTM ops: one step of the recurrence, plugged into the shared
// sequence driver (peephole_lstm.cpp).
//
// Each step is split into tasks, one per thread, over a block of batch rows and a slice of hidden
// units. A forward task runs the recurrent GEMM for its slice (packed_gemm.h, on a copy of W_hh
// packed once per call) and then the fused element-wise pass of the same cells, so its slice of
// W_hh stays in its core's cache from step to step, and a step costs one fork-join. The backward
// runs the element-wise pass per slice of hidden units, then grad_gates_t W_hh per slice of the
// R output columns.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "cpu_capability.h"
#include "cpu_matmul.h"
#include "../peephole_lstm.h"
#include "../tensor_utils.h"
#include "packed_gemm.h"

namespace tlstm {
namespace {

// How a step's [B, columns] work is split into tasks: row blocks x column slices.
struct StepPartition {
  std::vector<int64_t> rows;     // row_blocks + 1 bounds over [0, B)
  std::vector<int64_t> columns;  // column_slices + 1 bounds over [0, n), inner ones aligned
  int64_t tasks() const { return int64_t(rows.size() - 1) * int64_t(columns.size() - 1); }
  int64_t slices() const { return int64_t(columns.size() - 1); }
  // rows [b0, b1) and columns [c0, c1) of a task
  void bounds(int64_t task, int64_t& b0, int64_t& b1, int64_t& c0, int64_t& c1) const {
    const int64_t r = task / slices(), k = task % slices();
    b0 = rows[r];
    b1 = rows[r + 1];
    c0 = columns[k];
    c1 = columns[k + 1];
  }
};

std::vector<int64_t> split_range(int64_t n, int64_t parts, int64_t align) {
  std::vector<int64_t> bounds(parts + 1);
  for (int64_t k = 0; k <= parts; ++k) {
    bounds[k] = k == parts ? n : std::min(n, (n * k / parts + align - 1) / align * align);
  }
  return bounds;
}

// Splits a step whose GEMM costs `macs` multiply-adds over `n` output columns: at most one task
// per thread and none smaller than ~64k multiply-adds; columns first (each task then reads only
// its slice of the weight), batch rows when there are too few columns. Slices hold whole
// packed panels. The same sizes always give the same partition.
template <typename scalar_t>
StepPartition partition_step(int64_t B, int64_t n, int64_t macs) {
  constexpr int64_t kMinTaskMacs = 1 << 16;
  const int64_t kAlign = cpu::panel_width<scalar_t>();
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t tasks = std::clamp<int64_t>(macs / kMinTaskMacs, 1, threads);
  const int64_t column_slices = std::clamp<int64_t>((n + kAlign - 1) / kAlign, 1, tasks);
  const int64_t row_blocks = std::clamp<int64_t>(tasks / column_slices, 1, std::max<int64_t>(B, 1));
  return {split_range(B, row_blocks, 1), split_range(n, column_slices, kAlign)};
}

// Packs, slice after slice, the column blocks {g * block + [c0, c1)} for g < blocks of a
// weight [K, blocks * block] (any strides: W_hh^T is a view): what the task owning columns
// [c0, c1) multiplies by.
template <typename scalar_t>
Tensor pack_weight_slices(const Tensor& weight, int64_t blocks, const std::vector<int64_t>& columns) {
  const int64_t K = weight.size(0), block = weight.size(1) / blocks;
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
  int64_t total = 0;
  for (size_t k = 0; k + 1 < columns.size(); ++k) {
    total += blocks * cpu::packed_size<scalar_t>(K, columns[k + 1] - columns[k]);
  }
  Tensor packed = at::empty({total}, weight.options());
  scalar_t* out = packed.data_ptr<scalar_t>();
  const scalar_t* w = weight.data_ptr<scalar_t>();
  for (size_t k = 0; k + 1 < columns.size(); ++k) {
    const int64_t n = columns[k + 1] - columns[k];
    for (int64_t g = 0; g < blocks; ++g) {
      cpu::pack_panels_strided(w + (g * block + columns[k]) * s1, s0, s1, K, n, out);
      out += cpu::packed_size<scalar_t>(K, n);
    }
  }
  return packed;
}

// Where the packed blocks of the slice [columns[k], columns[k+1]) start.
template <typename scalar_t>
int64_t packed_slice_offset(const std::vector<int64_t>& columns, int64_t k, int64_t K,
                            int64_t blocks) {
  int64_t offset = 0;
  for (int64_t q = 0; q < k; ++q) {
    offset += blocks * cpu::packed_size<scalar_t>(K, columns[q + 1] - columns[q]);
  }
  return offset;
}

// ---- forward -----------------------------------------------------------------------------

template <typename scalar_t>
StepPartition forward_partition(int64_t B, int64_t H, int64_t R) {
  return partition_step<scalar_t>(B, H, B * R * 4 * H);
}

void prepare_forward_cpu(PeepholeForwardBuffers& buf) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.weight_hh_t.size(0);
  AT_DISPATCH_FLOATING_TYPES(buf.gates.scalar_type(), "tlstm_peephole_prepare_cpu", [&] {
    // W_hh^T [R, 4H]: for each slice of hidden units, its i, f, g, o columns, packed.
    const auto part = forward_partition<scalar_t>(B, H, R);
    buf.workspace = {pack_weight_slices<scalar_t>(buf.weight_hh_t, 4, part.columns)};
  });
}

// The cells [j0, j0 + w) of one batch row. Gate k of cell j0 + jj sits at a[k*H + jj] (a_t
// without biases; overwritten with the post-activation gate) and at bias[k*H + jj]; its
// peephole weights at peephole[k*H + jj].
template <typename scalar_t, class Act, bool kProjected>
inline void forward_cells(scalar_t* __restrict a, const scalar_t* __restrict bias,
                          const scalar_t* __restrict peephole,
                          const scalar_t* __restrict c_prev, scalar_t* __restrict c_next,
                          scalar_t* __restrict m,    // hidden_pre, or h_t without projection
                          scalar_t* __restrict out,  // output_t (without projection)
                          int64_t H, int64_t w) {
  for (int64_t jj = 0; jj < w; ++jj) {
    const auto s = peephole_cell_forward<Act>(
        a[jj] + bias[jj], a[H + jj] + bias[H + jj], a[2 * H + jj] + bias[2 * H + jj],
        a[3 * H + jj] + bias[3 * H + jj], c_prev[jj], peephole[jj], peephole[H + jj],
        peephole[2 * H + jj]);
    a[jj] = s.i;
    a[H + jj] = s.f;
    a[2 * H + jj] = s.g;
    a[3 * H + jj] = s.o;
    c_next[jj] = s.c;
    m[jj] = s.m;
    if (!kProjected) out[jj] = s.m;
  }
}

template <typename scalar_t, class Act, bool kProjected>
void forward_step_kernel(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.hidden_states.size(2);
  const scalar_t* packed_weight = buf.workspace.at(0).data_ptr<scalar_t>();
  scalar_t* gates = buf.gates.data_ptr<scalar_t>() + step.gate * B * 4 * H;         // [B, 4H]
  const scalar_t* cell_prev = buf.cell_states.data_ptr<scalar_t>() + step.prev * B * H;
  scalar_t* cell_next = buf.cell_states.data_ptr<scalar_t>() + step.next * B * H;    // [B, H]
  const scalar_t* hidden_prev = buf.hidden_states.data_ptr<scalar_t>() + step.prev * B * R;
  scalar_t* hidden_next = buf.hidden_states.data_ptr<scalar_t>() + step.next * B * R;  // [B, R]
  scalar_t* output = buf.output.data_ptr<scalar_t>() + step.t * B * R;               // [B, R]
  scalar_t* hidden_pre = kProjected ? buf.hidden_pre.data_ptr<scalar_t>() : nullptr;  // [B, H]
  const scalar_t* peephole = buf.peephole.data_ptr<scalar_t>();                      // [3H]
  const scalar_t* bias = buf.bias.data_ptr<scalar_t>();                              // [4H]
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;
  const auto part = forward_partition<scalar_t>(B, H, R);

  at::parallel_for(0, part.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      int64_t b0, b1, j0, j1;
      part.bounds(task, b0, b1, j0, j1);
      const int64_t w = j1 - j0;
      if (w == 0 || b1 == b0) continue;
      const int64_t slice = task % part.slices();
      const scalar_t* packed =
          packed_weight + packed_slice_offset<scalar_t>(part.columns, slice, R, 4);
      const int64_t packed_gate = cpu::packed_size<scalar_t>(R, w);
      cpu::run_for_cpu([&](auto isa) {
      // a_t[b0:b1, g*H + j0 : g*H + j1] += h_{t-1}[b0:b1] W_hh^T[:, same columns], per gate
      for (int64_t g = 0; g < 4; ++g) {
        cpu::gemm_packed<scalar_t, decltype(isa)>(b1 - b0, w, R, hidden_prev + b0 * R, R,
                                                  packed + g * packed_gate,
                                                  gates + b0 * 4 * H + g * H + j0, 4 * H,
                                                  /*accumulate=*/true);
      }
      for (int64_t b = b0; b < b1; ++b) {
        if (row_active(lengths, b, step.t)) {
          forward_cells<scalar_t, Act, kProjected>(
              gates + b * 4 * H + j0, bias + j0, peephole + j0, cell_prev + b * H + j0,
              cell_next + b * H + j0,
              kProjected ? hidden_pre + b * H + j0 : hidden_next + b * R + j0,
              output + b * R + j0, H, w);
        } else {  // past the sequence's end: the state stays, the output is zero
          std::copy_n(cell_prev + b * H + j0, w, cell_next + b * H + j0);
          if (kProjected) {
            std::fill_n(hidden_pre + b * H + j0, w, scalar_t(0));
          } else {
            std::copy_n(hidden_prev + b * R + j0, w, hidden_next + b * R + j0);
            std::fill_n(output + b * R + j0, w, scalar_t(0));
          }
        }
      }
      });
    }
  });
}

// ---- backward ----------------------------------------------------------------------------

template <typename scalar_t>
StepPartition backward_cell_partition(int64_t B, int64_t H, int64_t R) {
  return partition_step<scalar_t>(B, H, B * R * 4 * H);
}

template <typename scalar_t>
StepPartition backward_gemm_partition(int64_t B, int64_t H, int64_t R) {
  return partition_step<scalar_t>(B, R, B * R * 4 * H);
}

void prepare_backward_cpu(PeepholeBackwardBuffers& buf) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.weight_hh.size(1);
  AT_DISPATCH_FLOATING_TYPES(buf.gates.scalar_type(), "tlstm_peephole_prepare_cpu", [&] {
    // W_hh [4H, R]: for each slice of the R columns, packed.
    const auto part = backward_gemm_partition<scalar_t>(B, H, R);
    buf.workspace = {pack_weight_slices<scalar_t>(buf.weight_hh, 1, part.columns)};
  });
}

// The cells [j0, j0 + w) of one batch row; gate k of cell j0 + jj at g[k*H + jj] and da[k*H + jj],
// its peephole weights at peephole[k*H + jj], its peephole gradient sums at grad_w[k*H + jj].
template <typename scalar_t, class Act, bool kProjected, bool kPeephole>
inline void backward_cells(const scalar_t* __restrict g,         // saved i, f, g, o
                           const scalar_t* __restrict c,         // c_t
                           const scalar_t* __restrict c_prev,    // c_{t-1}
                           const scalar_t* __restrict grad_m,    // dL/dm, or dL/dh_t from later
                           const scalar_t* __restrict grad_out,  // dL/doutput_t (no projection)
                           scalar_t* __restrict grad_c,          // in dL/dc_t, out dL/dc_{t-1}
                           scalar_t* __restrict da,              // out: dL/da_t
                           scalar_t* __restrict grad_w,          // peephole sums, accumulated
                           scalar_t* __restrict m,               // out: m_t (projection)
                           const scalar_t* __restrict peephole, int64_t H, int64_t w) {
  for (int64_t jj = 0; jj < w; ++jj) {
    const scalar_t dm = kProjected ? grad_m[jj] : grad_m[jj] + grad_out[jj];
    const scalar_t o = g[3 * H + jj];
    const auto d = peephole_cell_backward<Act>(g[jj], g[H + jj], g[2 * H + jj], o, c[jj],
                                               c_prev[jj], peephole[jj], peephole[H + jj],
                                               peephole[2 * H + jj], dm, grad_c[jj]);
    da[jj] = d.a_i;
    da[H + jj] = d.a_f;
    da[2 * H + jj] = d.a_g;
    da[3 * H + jj] = d.a_o;
    grad_c[jj] = d.c_prev;
    if (kPeephole) {
      grad_w[jj] += d.a_i * c_prev[jj];
      grad_w[H + jj] += d.a_f * c_prev[jj];
      grad_w[2 * H + jj] += d.a_o * c[jj];
    }
    if (kProjected) m[jj] = o * Act::value(c[jj]);
  }
}

template <typename scalar_t, class Act, bool kProjected, bool kPeephole>
void backward_step_kernel(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  const int64_t B = buf.gates.size(1), H = buf.gates.size(2) / 4, R = buf.grad_output.size(2);
  const scalar_t* gates = buf.gates.data_ptr<scalar_t>() + step.t * B * 4 * H;  // [B, 4H]
  const scalar_t* cell_prev = buf.cell_states.data_ptr<scalar_t>() + step.prev * B * H;
  const scalar_t* cell = buf.cell_states.data_ptr<scalar_t>() + step.next * B * H;  // [B, H]
  const scalar_t* grad_output = buf.grad_output.data_ptr<scalar_t>() + step.t * B * R;
  const scalar_t* grad_hidden = buf.grad_hidden.data_ptr<scalar_t>();            // [B, R]
  scalar_t* grad_hidden_next = buf.grad_hidden_next.data_ptr<scalar_t>();        // [B, R]
  const scalar_t* grad_m = kProjected ? buf.grad_hidden_pre.data_ptr<scalar_t>()  // [B, H]
                                      : grad_hidden;
  scalar_t* hidden_pre_all =
      kProjected ? buf.hidden_pre_all.data_ptr<scalar_t>() + step.t * B * H : nullptr;
  scalar_t* grad_cell = buf.grad_cell.data_ptr<scalar_t>();                       // [B, H]
  scalar_t* grad_gates = buf.grad_gates.data_ptr<scalar_t>() + step.t * B * 4 * H;
  const scalar_t* peephole = buf.peephole.data_ptr<scalar_t>();
  scalar_t* grad_peephole = kPeephole ? buf.grad_peephole_rows.data_ptr<scalar_t>() : nullptr;
  const scalar_t* packed_weight = buf.workspace.at(0).data_ptr<scalar_t>();
  const int64_t* lengths = buf.lengths.defined() ? buf.lengths.data_ptr<int64_t>() : nullptr;

  // Element-wise pass, tasks over batch rows x slices of hidden units.
  const auto cells = backward_cell_partition<scalar_t>(B, H, R);
  at::parallel_for(0, cells.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      int64_t b0, b1, j0, j1;
      cells.bounds(task, b0, b1, j0, j1);
      const int64_t w = j1 - j0;
      cpu::run_for_cpu([&](auto) {
      for (int64_t b = b0; b < b1 && w > 0; ++b) {
        if (row_active(lengths, b, step.t)) {
          backward_cells<scalar_t, Act, kProjected, kPeephole>(
              gates + b * 4 * H + j0, cell + b * H + j0, cell_prev + b * H + j0,
              grad_m + b * (kProjected ? H : R) + j0, grad_output + b * R + j0,
              grad_cell + b * H + j0, grad_gates + b * 4 * H + j0,
              kPeephole ? grad_peephole + b * 3 * H + j0 : nullptr,
              kProjected ? hidden_pre_all + b * H + j0 : nullptr, peephole + j0, H, w);
        } else {  // past the sequence's end: dL/dc passes through, nothing reaches the gates
          for (int64_t k = 0; k < 4; ++k) {
            std::fill_n(grad_gates + b * 4 * H + k * H + j0, w, scalar_t(0));
          }
          if (kProjected) std::fill_n(hidden_pre_all + b * H + j0, w, scalar_t(0));
        }
      }
      });
    }
  });

  // dL/dh_{t-1} = dL/da_t W_hh, tasks over batch rows x slices of the R columns; rows past their
  // end pass dL/dh_t through.
  const auto gemm = backward_gemm_partition<scalar_t>(B, H, R);
  at::parallel_for(0, gemm.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      int64_t b0, b1, r0, r1;
      gemm.bounds(task, b0, b1, r0, r1);
      const int64_t w = r1 - r0;
      if (w == 0 || b1 == b0) continue;
      const int64_t slice = task % gemm.slices();
      const scalar_t* packed =
          packed_weight + packed_slice_offset<scalar_t>(gemm.columns, slice, 4 * H, 1);
      cpu::run_for_cpu([&](auto isa) {
        cpu::gemm_packed<scalar_t, decltype(isa)>(b1 - b0, w, 4 * H, grad_gates + b0 * 4 * H,
                                                  4 * H, packed, grad_hidden_next + b0 * R + r0,
                                                  R, /*accumulate=*/false);
      });
      for (int64_t b = b0; b < b1; ++b) {
        if (!row_active(lengths, b, step.t)) {
          std::copy_n(grad_hidden + b * R + r0, w, grad_hidden_next + b * R + r0);
        }
      }
    }
  });
}

// ---- dispatch and registration -------------------------------------------------------------

void forward_step_cpu(const PeepholeForwardBuffers& buf, const StepSlots& step) {
  AT_DISPATCH_FLOATING_TYPES(buf.gates.scalar_type(), "tlstm_peephole_forward_step_cpu", [&] {
    dispatch_step_switches(buf, [&](auto act, auto proj) {
      forward_step_kernel<scalar_t, decltype(act), decltype(proj)::value>(buf, step);
    });
  });
}

void backward_step_cpu(const PeepholeBackwardBuffers& buf, const StepSlots& step) {
  AT_DISPATCH_FLOATING_TYPES(buf.gates.scalar_type(), "tlstm_peephole_backward_step_cpu", [&] {
    dispatch_step_switches(buf, [&](auto act, auto proj, auto peep) {
      backward_step_kernel<scalar_t, decltype(act), decltype(proj)::value,
                           decltype(peep)::value>(buf, step);
    });
  });
}

struct CpuBackend {
  static constexpr PeepholeStepKernels kernels{
      .matmul_out = cpu::matmul_out,
      .prepare_forward = prepare_forward_cpu,
      .forward_step = forward_step_cpu,
      .prepare_backward = prepare_backward_cpu,
      .backward_step = backward_step_cpu,
      .prepare_right_operand = cpu::prepare_right_operand,
      .inference_chunk_rows = cpu::kInferenceChunkRows,
      .matmul_rows_out = cpu::matmul_rows_out,
  };
  static void check_input(const char* op, const Tensor& input) {
    check_floating(op, input, {at::kFloat, at::kDouble}, "CPU");
  }
  using Guard = NoDeviceGuard;
};

}  // namespace

TORCH_LIBRARY_IMPL(tlstm, CPU, m) {
  m.impl("peephole_lstm_forward", &peephole_lstm_forward_op<CpuBackend>);
  m.impl("peephole_lstm_backward", &peephole_lstm_backward_op<CpuBackend>);
}

}  // namespace tlstm
