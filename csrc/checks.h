// Argument checks shared by the ops of both cells: each failure names the argument and the
// expected against the actual value.
#pragma once

#include <ATen/OpMathType.h>
#include <torch/types.h>

#include <string>
#include <tuple>
#include <vector>

namespace tlstm {

inline std::string shape_string(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(sizes[k]);
  }
  return s + "]";
}

// `what` describes the expected shape in dimension letters, e.g. "[B, R]".
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        const std::vector<int64_t>& expected, const char* what) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ", what, " = ",
              shape_string(expected), ", got ", shape_string(t.sizes()));
}

// t on the input's device, with dtype `dtype`; `whose` says which dtype that is.
inline void check_dtype_device(const char* op, const char* name, const at::Tensor& t,
                               at::ScalarType dtype, const at::Tensor& input, const char* whose) {
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name, " on device ",
              input.device(), " (the input's), got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": expected ", name, " of dtype ", dtype, " (", whose,
              "), got ", t.scalar_type());
}

inline void check_same_dtype_device(const char* op, const char* name, const at::Tensor& t,
                                    const at::Tensor& input) {
  check_dtype_device(op, name, t, input.scalar_type(), input, "the input's");
}

// A saved state buffer kept in the dtype the input's arithmetic runs in (float32 for half).
inline void check_op_math_buffer(const char* op, const char* name, const at::Tensor& t,
                                 const at::Tensor& input) {
  check_dtype_device(op, name, t, at::toOpMathType(input.scalar_type()), input,
                     "the input's arithmetic dtype");
}

// lengths: [B] int64 on the input's device; step t of sequence b runs iff t < lengths[b].
// Values must lie in [0, T]. They are checked where that costs no device synchronisation, on
// the CPU; on a GPU a value below 0 acts as 0 and one above T as T (never out of bounds).
inline void check_lengths(const char* op, const at::Tensor& lengths, const at::Tensor& input,
                          int64_t batch, int64_t steps) {
  TORCH_CHECK(lengths.scalar_type() == at::kLong, op, ": expected lengths of dtype int64, got ",
              lengths.scalar_type());
  TORCH_CHECK(lengths.device() == input.device(), op, ": expected lengths on device ",
              input.device(), " (the input's), got ", lengths.device());
  check_shape(op, "lengths", lengths, {batch}, "[B]");
  if (lengths.is_cpu() && batch > 0) {
    const auto range = lengths.aminmax();
    const int64_t lowest = std::get<0>(range).item<int64_t>();
    const int64_t highest = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lowest >= 0 && highest <= steps, op,
                ": expected every lengths value in [0, T] = [0, ", steps, "], got values from ",
                lowest, " to ", highest);
  }
}

inline void check_floating(const char* op, const at::Tensor& input,
                           std::initializer_list<at::ScalarType> supported, const char* device) {
  bool ok = false;
  std::string names;
  for (auto s : supported) {
    ok = ok || input.scalar_type() == s;
    names += (names.empty() ? "" : ", ") + std::string(c10::toString(s));
  }
  TORCH_CHECK(ok, op, " on ", device, " supports dtypes ", names, ", got ", input.scalar_type());
}

}  // namespace tlstm
