// The drivers' row-major matrix products, on the backend's own GEMM where it has one.
#pragma once

#include <torch/types.h>

#include <memory>

namespace tlstm {

using MatmulOut = void (*)(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// out [M, N] = a [M, K] b [K, N]; out must be contiguous.
inline void matmul_out(MatmulOut backend, at::Tensor& out, const at::Tensor& a,
                       const at::Tensor& b) {
  if (backend != nullptr) {
    backend(out, a.contiguous(), b.contiguous());
  } else {
    at::mm_out(out, a, b);
  }
}

inline at::Tensor matmul(MatmulOut backend, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  matmul_out(backend, out, a, b);
  return out;
}

// A right operand b [K, N] of many products (one per step), which a backend may prepare once
// (e.g. pack into its GEMM's layout).
class RepeatedRightOperand {
 public:
  virtual ~RepeatedRightOperand() = default;
  // out [M, N] = a [M, K] b, or out += a b with `accumulate`; a and out contiguous
  virtual void matmul_out(at::Tensor& out, const at::Tensor& a, bool accumulate) const = 0;
};

using PrepareRightOperand = std::unique_ptr<RepeatedRightOperand> (*)(const at::Tensor& b);

// The backend's prepared operand, or ATen's GEMM on b as it is.
inline std::unique_ptr<RepeatedRightOperand> repeated_right_operand(PrepareRightOperand backend,
                                                                    const at::Tensor& b) {
  struct AtenOperand : RepeatedRightOperand {
    explicit AtenOperand(at::Tensor b) : b_(std::move(b)) {}
    void matmul_out(at::Tensor& out, const at::Tensor& a, bool accumulate) const override {
      if (accumulate) {
        out.addmm_(a, b_);
      } else {
        at::mm_out(out, a, b_);
      }
    }
    at::Tensor b_;
  };
  if (backend != nullptr) return backend(b);
  return std::make_unique<AtenOperand>(b);
}

}  // namespace tlstm
