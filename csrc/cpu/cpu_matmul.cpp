#include "cpu_matmul.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "packed_gemm.h"

namespace tlstm {
namespace cpu {

namespace {
constexpr int64_t kRowChunk = 64;  // rows of a, and of out, one task works through at a time

template <typename scalar_t>
at::Tensor pack(const at::Tensor& b) {  // b [K, N] contiguous
  const int64_t K = b.size(0), N = b.size(1);
  at::Tensor packed = at::empty({packed_size<scalar_t>(K, N)}, b.options());
  pack_panels(b.data_ptr<scalar_t>(), N, K, N, packed.data_ptr<scalar_t>());
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
                             [&] { packed = pack<scalar_t>(b.contiguous()); });
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
}  // namespace

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
