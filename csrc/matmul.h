// The drivers' row-major matrix products, on the backend's own GEMM where it has one.
#pragma once

#include <torch/types.h>

#include <algorithm>
#include <memory>
#include <vector>

namespace tlstm {

// out [M, N] = a [M, K] b [K, N]: out and a row-major contiguous, b in any layout (the
// backend packs it: a transposed weight is read as it is, not copied first).
using MatmulOut = void (*)(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// out [M, N] = a [M, K] b [K, N]; out must be contiguous.
inline void matmul_out(MatmulOut backend, at::Tensor& out, const at::Tensor& a,
                       const at::Tensor& b) {
  if (backend != nullptr) {
    backend(out, a.contiguous(), b);
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
  // The same for `rows` rows of each, from out_row of out [*, N] and from a_row of a [*, K]
  // (both contiguous): what a step multiplies, without a view of each block every step (a
  // backend may read the rows in place; here they are views).
  virtual void matmul_block_out(const at::Tensor& out, int64_t out_row, const at::Tensor& a,
                                int64_t a_row, int64_t rows, bool accumulate) const {
    at::Tensor block = out.narrow(0, out_row, rows);
    matmul_out(block, a.narrow(0, a_row, rows), accumulate);
  }
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

// A run of a product over rows: rows a_row .. a_row + count - 1 of a against rows b_row ..
// b_row + count - 1 of b.
struct RowRun {
  int64_t a_row, b_row, count;
};

// out [M, N] = A^T B, A [K, M] and B [K, N] the rows of a [*, M] and b [*, N] that the runs
// name, in order; a is the call's, or the product's own.
struct RowsProduct {
  at::Tensor out;  // [M, N] contiguous
  std::vector<RowRun> runs;
  at::Tensor a;    // [*, M] contiguous, or undefined: the call's a
};

// Products over rows of the same b and of a (row-major contiguous, each product's own a where
// it has one): the tLSTM's weight gradients, one per tap, and the peephole LSTM's two, which a
// backend may read once for all of them.
using MatmulRowsOut = void (*)(const std::vector<RowsProduct>& products, const at::Tensor& a,
                               const at::Tensor& b);

// The backend's, or per product gathered copies of ~8192 rows at a time and a GEMM each.
inline void matmul_rows_out(MatmulRowsOut backend, PrepareRightOperand prepare,
                            const std::vector<RowsProduct>& products, const at::Tensor& a,
                            const at::Tensor& b) {
  if (backend != nullptr) return backend(products, a, b);
  constexpr int64_t kChunkRows = 8192;
  for (const RowsProduct& product : products) {
    std::vector<int64_t> a_rows, b_rows;
    for (const RowRun& run : product.runs) {
      for (int64_t i = 0; i < run.count; ++i) {
        a_rows.push_back(run.a_row + i);
        b_rows.push_back(run.b_row + i);
      }
    }
    const int64_t K = int64_t(a_rows.size());
    const at::Tensor& a_p = product.a.defined() ? product.a : a;
    at::Tensor out = product.out;
    if (K == 0) out.zero_();
    const auto index = [&](const std::vector<int64_t>& rows, int64_t k0, int64_t count) {
      return at::tensor(std::vector<int64_t>(rows.begin() + k0, rows.begin() + k0 + count),
                        at::TensorOptions().dtype(at::kLong)).to(a_p.device());
    };
    for (int64_t k0 = 0; k0 < K; k0 += kChunkRows) {
      const int64_t count = std::min(kChunkRows, K - k0);
      const at::Tensor a_t = a_p.index_select(0, index(a_rows, k0, count)).t().contiguous();
      const at::Tensor b_k = b.index_select(0, index(b_rows, k0, count));
      repeated_right_operand(prepare, b_k)->matmul_out(out, a_t, /*accumulate=*/k0 > 0);
    }
  }
}

// a_i^T b [M_i, N] for each a_i [K, M_i] and one b [K, N]: the backend's products over rows
// (all of them), which read b once for all, or ATen's GEMMs on the transposed views.
inline std::vector<at::Tensor> matmul_t(MatmulRowsOut backend, const std::vector<at::Tensor>& as,
                                        const at::Tensor& b) {
  std::vector<at::Tensor> outs;
  if (backend == nullptr) {
    for (const at::Tensor& a : as) outs.push_back(at::mm(a.t(), b));
    return outs;
  }
  std::vector<RowsProduct> products;
  for (const at::Tensor& a : as) {
    outs.push_back(at::empty({a.size(1), b.size(1)}, a.options()));
    products.push_back({outs.back(), {RowRun{0, 0, a.size(0)}}, a.contiguous()});
  }
  backend(products, as.front().contiguous(), b.contiguous());
  return outs;
}

inline at::Tensor matmul_t(MatmulRowsOut backend, const at::Tensor& a, const at::Tensor& b) {
  return matmul_t(backend, std::vector<at::Tensor>{a}, b).front();
}

}  // namespace tlstm
