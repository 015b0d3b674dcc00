// Small host helpers of both cells' drivers and backends.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/types.h>

#include <algorithm>

namespace tlstm {

// An optional argument made contiguous, or an undefined tensor where it is absent.
inline at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The data of t, or null where it is undefined or empty.
template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// [T, B, 1] bool: true where step t of sequence b runs (t < lengths[b]).
inline at::Tensor active_mask(const at::Tensor& lengths, int64_t T) {
  return at::arange(T, lengths.options()).unsqueeze(1).lt(lengths.unsqueeze(0)).unsqueeze(2);
}

// Steps of a chunk of about chunk_rows rows (steps x B) out of `steps`: all of them where
// chunk_rows is 0 (a backend that takes every step at once), else at least one.
inline int64_t chunk_steps(int64_t chunk_rows, int64_t B, int64_t steps) {
  if (chunk_rows <= 0) return steps;
  return std::min(steps, std::max<int64_t>(1, chunk_rows / std::max<int64_t>(B, 1)));
}

// Inside a registered op's kernel: the tensor operations of the drivers (hundreds of views and
// small ops per call, several per step) skip the autograd and view-tracking layers of the
// dispatcher, as ATen's own kernels do below VariableType. Autograd is the ops' wrappers' job
// (tlstm/ops.py); in here no operation records a graph or tracks a view's base. The fixed cost
// of a tLSTM call of 100 steps (B = 1, M = 8, CPU) went from 0.39 to 0.30 ms (forward, depth
// 1) and from 0.92 to 0.69 ms (depth 4).
using KernelScope = at::AutoDispatchBelowADInplaceOrView;

// For backends without a device guard (the CPU).
struct NoDeviceGuard {
  explicit NoDeviceGuard(c10::Device) {}
};

}  // namespace tlstm
