#include "cpu_matmul.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "packed_gemm.h"

namespace tlstm {
namespace cpu {

namespace {
constexpr int64_t kRowChunk = 64;  // rows of a, and of out, one task works through at a time

// b [K, N] in any layout: rows of contiguous values are copied as they are; otherwise (e.g. a
// transposed weight, or one tap of the tLSTM's weight_hh) a panel at a time, which keeps the
// panel's columns of b in the cache while it goes down the rows (no transposed copy first).
template <typename scalar_t>
at::Tensor pack(const at::Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1);
  at::Tensor packed = at::empty({packed_size<scalar_t>(K, N)}, b.options());
  const scalar_t* B = b.data_ptr<scalar_t>();
  scalar_t* out = packed.data_ptr<scalar_t>();
  if (b.stride(1) == 1 || N == 1) {
    pack_panels(B, b.stride(0), K, N, out);
    return packed;
  }
  // 16 rows of the panel at a time: the reads of a column's 16 values and the writes of the
  // 16 packed rows each stay within a few cache lines
  constexpr int64_t kRows = 16;
  const int64_t P = panel_width<scalar_t>(), s0 = b.stride(0), s1 = b.stride(1);
  for (int64_t n0 = 0; n0 < N; n0 += P, out += K * P) {
    const int64_t cols = std::min(P, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kRows) {
      const int64_t rows = std::min(kRows, K - k0);
      scalar_t* o = out + k0 * P;
      for (int64_t j = 0; j < P; ++j) {
        const scalar_t* column = B + k0 * s0 + (n0 + j) * s1;
        for (int64_t k = 0; k < rows; ++k) o[k * P + j] = j < cols ? column[k * s0] : scalar_t(0);
      }
    }
  }
  return packed;
}

// out [M, N] (+)= a [M, K] times the packed [K, N].
template <typename scalar_t>
void matmul_packed(at::Tensor& out, const at::Tensor& a, const at::Tensor& packed, int64_t N,
                   bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1);
  const int64_t P = panel_width<scalar_t>();
  const int64_t chunks = (M + kRowChunk - 1) / kRowChunk, panels = (N + P - 1) / P;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Tasks: row chunks x panel slices, with as many slices as it takes to occupy the threads.
  const int64_t slices = std::clamp<int64_t>(threads / chunks, 1, panels);
  const scalar_t* A = a.data_ptr<scalar_t>();
  const scalar_t* Bp = packed.data_ptr<scalar_t>();
  scalar_t* C = out.data_ptr<scalar_t>();
  at::parallel_for(0, chunks * slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / slices, slice = task % slices;
      const int64_t m0 = chunk * kRowChunk, rows = std::min(kRowChunk, M - m0);
      const int64_t p0 = panels * slice / slices, p1 = panels * (slice + 1) / slices;
      if (p1 == p0) continue;
      const int64_t n0 = p0 * P, cols = std::min(N, p1 * P) - n0;
      run_for_cpu([&](auto isa) {
        gemm_packed<scalar_t, decltype(isa)>(rows, cols, K, A + m0 * K, K, Bp + p0 * K * P,
                                             C + m0 * N + n0, N, accumulate);
      });
    }
  });
}

void check_operands(const at::Tensor& out, const at::Tensor& a, int64_t K, int64_t N) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && a.size(1) == K && a.is_contiguous() &&
                        out.is_contiguous() && out.dim() == 2 && out.size(0) == a.size(0) &&
                        out.size(1) == N && out.scalar_type() == a.scalar_type());
}

// out (+)= a packed, for any K (K = 0: zeros, or nothing to add).
void run_packed(at::Tensor& out, const at::Tensor& a, const at::Tensor& packed, int64_t K,
                int64_t N, bool accumulate) {
  check_operands(out, a, K, N);
  if (out.numel() == 0) return;
  if (K == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "tlstm_cpu_matmul",
                             [&] { matmul_packed<scalar_t>(out, a, packed, N, accumulate); });
}

at::Tensor pack_any(const at::Tensor& b) {
  at::Tensor packed;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "tlstm_cpu_pack",
                             [&] { packed = pack<scalar_t>(b); });
  return packed;
}

struct PackedOperand : RepeatedRightOperand {
  explicit PackedOperand(const at::Tensor& b) : packed(pack_any(b)), K(b.size(0)), N(b.size(1)) {}
  void matmul_out(at::Tensor& out, const at::Tensor& a, bool accumulate) const override {
    run_packed(out, a, packed, K, N, accumulate);
  }
  at::Tensor packed;
  int64_t K, N;
};
// Rows of A and B that matmul_rows_out transposes and packs at a time: the block's packed B
// ([512, N]) stays in the cache while the register tiles go through it.
constexpr int64_t kRowsPerBlock = 512;

template <typename scalar_t>
void matmul_rows_typed(at::Tensor& out, const at::Tensor& a, const std::vector<int64_t>& a_rows,
                       const at::Tensor& b, const std::vector<int64_t>& b_rows, bool accumulate) {
  const int64_t M = a.size(1), N = b.size(1), K = int64_t(a_rows.size());
  const int64_t P = panel_width<scalar_t>(), panels = (N + P - 1) / P;
  const scalar_t* A = a.data_ptr<scalar_t>();
  const scalar_t* B = b.data_ptr<scalar_t>();
  const int64_t block = std::min(K, kRowsPerBlock);
  at::Tensor a_t = at::empty({M * block}, a.options());                         // [M, block]
  at::Tensor packed = at::empty({packed_size<scalar_t>(block, N)}, b.options());  // B's block
  std::vector<const scalar_t*> rows(block);
  for (int64_t k0 = 0; k0 < K; k0 += block) {
    const int64_t count = std::min(block, K - k0);
    scalar_t* at_ptr = a_t.data_ptr<scalar_t>();
    // A's rows k0 .. k0 + count - 1 as the columns of a_t [M, count], 16 rows at a time
    at::parallel_for(0, (count + 15) / 16, 4, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const int64_t r0 = g * 16, r1 = std::min(count, r0 + 16);
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t r = r0; r < r1; ++r) at_ptr[m * count + r] = A[a_rows[k0 + r] * M + m];
        }
      }
    });
    for (int64_t r = 0; r < count; ++r) rows[r] = B + b_rows[k0 + r] * N;
    scalar_t* packed_ptr = packed.data_ptr<scalar_t>();
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      pack_row_panels(rows.data(), count, begin * P, std::min(N, end * P),
                      packed_ptr + begin * count * P);
    });
    const at::Tensor a_block = a_t.narrow(0, 0, M * count).view({M, count});
    matmul_packed<scalar_t>(out, a_block, packed, N, accumulate || k0 > 0);
  }
}
}  // namespace

void matmul_rows_out(at::Tensor& out, const at::Tensor& a, const std::vector<int64_t>& a_rows,
                     const at::Tensor& b, const std::vector<int64_t>& b_rows, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && b.dim() == 2 && a.is_contiguous() && b.is_contiguous() &&
                        a_rows.size() == b_rows.size() && out.is_contiguous() &&
                        out.size(0) == a.size(1) && out.size(1) == b.size(1));
  if (out.numel() == 0) return;
  if (a_rows.empty()) {
    if (!accumulate) out.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "tlstm_cpu_matmul_rows", [&] {
    matmul_rows_typed<scalar_t>(out, a, a_rows, b, b_rows, accumulate);
  });
}

void matmul_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(b.dim() == 2);
  PackedOperand(b).matmul_out(out, a, /*accumulate=*/false);
}

std::unique_ptr<RepeatedRightOperand> prepare_right_operand(const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(b.dim() == 2);
  return std::make_unique<PackedOperand>(b);
}

}  // namespace cpu
}  // namespace tlstm
