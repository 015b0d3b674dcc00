// Small host helpers of both cells' drivers and backends.
#pragma once

#include <torch/types.h>

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

// For backends without a device guard (the CPU).
struct NoDeviceGuard {
  explicit NoDeviceGuard(c10::Device) {}
};

}  // namespace tlstm
