#include "cpu_matmul.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "packed_gemm.h"

namespace tlstm {
namespace cpu {

namespace {
constexpr int64_t kRowChunk = 64;  // rows of a, and of out, one task works through at a time

// b [K, N] in any layout (pack_panels_strided).
template <typename scalar_t>
at::Tensor pack(const at::Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1);
  at::Tensor packed = at::empty({packed_size<scalar_t>(K, N)}, b.options());
  pack_panels_strided(b.data_ptr<scalar_t>(), b.stride(0), b.stride(1), K, N,
                      packed.data_ptr<scalar_t>());
  return packed;
}

// C [M, N] (+)= the segments' sum of A's columns (rows of lda elements) times B's packed rows,
// B's panels panel_stride elements apart (gemm_packed_segments).
template <typename scalar_t>
void matmul_packed_segments(scalar_t* C, int64_t M, int64_t N, const scalar_t* A, int64_t lda,
                            const scalar_t* Bp, int64_t panel_stride,
                            const std::vector<KSegment>& segments, bool accumulate) {
  const int64_t P = panel_width<scalar_t>();
  const int64_t chunks = (M + kRowChunk - 1) / kRowChunk, panels = (N + P - 1) / P;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Tasks: row chunks x panel slices, with as many slices as it takes to occupy the threads.
  const int64_t slices = std::clamp<int64_t>(threads / chunks, 1, panels);
  at::parallel_for(0, chunks * slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / slices, slice = task % slices;
      const int64_t m0 = chunk * kRowChunk, rows = std::min(kRowChunk, M - m0);
      const int64_t p0 = panels * slice / slices, p1 = panels * (slice + 1) / slices;
      if (p1 == p0) continue;
      const int64_t n0 = p0 * P, cols = std::min(N, p1 * P) - n0;
      run_for_cpu([&](auto isa) {
        gemm_packed_segments<scalar_t, decltype(isa)>(
            rows, cols, segments.data(), int64_t(segments.size()), A + m0 * lda, lda,
            Bp + p0 * panel_stride, panel_stride, C + m0 * N + n0, N, accumulate);
      });
    }
  });
}

// out [M, N] (+)= a [M, K] times the packed [K, N].
template <typename scalar_t>
void matmul_packed(at::Tensor& out, const at::Tensor& a, const at::Tensor& packed, int64_t N,
                   bool accumulate) {
  const int64_t K = a.size(1);
  matmul_packed_segments<scalar_t>(out.data_ptr<scalar_t>(), a.size(0), N,
                                   a.data_ptr<scalar_t>(), K, packed.data_ptr<scalar_t>(),
                                   K * panel_width<scalar_t>(), {KSegment{0, 0, K}}, accumulate);
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
  // the rows read and written in place: a step's blocks cost no tensor views
  void matmul_block_out(const at::Tensor& out, int64_t out_row, const at::Tensor& a,
                        int64_t a_row, int64_t rows, bool accumulate) const override {
    TORCH_INTERNAL_ASSERT(a.dim() == 2 && a.size(1) == K && a.is_contiguous() &&
                          out.dim() == 2 && out.size(1) == N && out.is_contiguous() &&
                          out.scalar_type() == a.scalar_type() && rows >= 0 && out_row >= 0 &&
                          a_row >= 0 && out_row + rows <= out.size(0) &&
                          a_row + rows <= a.size(0));
    if (rows == 0 || N == 0) return;
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "tlstm_cpu_matmul_block", [&] {
      scalar_t* c = out.data_ptr<scalar_t>() + out_row * N;
      if (K == 0) {
        if (!accumulate) std::fill_n(c, rows * N, scalar_t(0));
        return;
      }
      matmul_packed_segments<scalar_t>(c, rows, N, a.data_ptr<scalar_t>() + a_row * K, K,
                                       packed.data_ptr<scalar_t>(), K * panel_width<scalar_t>(),
                                       {KSegment{0, 0, K}}, accumulate);
    });
  }
  at::Tensor packed;
  int64_t K, N;
};
// Rows of b that matmul_rows_out packs at a time: the block's packed rows ([512, N]) stay in
// the cache while the register tiles of every product go through them.
constexpr int64_t kRowsPerBlock = 512;

// The 16 x 16 tiles of matmul_rows_out's transposes.
constexpr int64_t kTile = 16;

// dst[j * ld + r] = src[r * M + m0 + j] for r < rows, j < cols: read along the source rows into
// a tile, written out along its columns (a column at a time, the reads of a tile in the cache).
template <typename scalar_t>
void transpose_tile(const scalar_t* src, int64_t M, int64_t m0, int64_t rows, int64_t cols,
                    scalar_t* dst, int64_t ld) {
  scalar_t tile[kTile][kTile];
  if (rows == kTile && cols == kTile) {
    for (int64_t r = 0; r < kTile; ++r) std::memcpy(tile[r], src + r * M + m0, sizeof(tile[r]));
    for (int64_t j = 0; j < kTile; ++j) {
      for (int64_t r = 0; r < kTile; ++r) dst[j * ld + r] = tile[r][j];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) std::copy_n(src + r * M + m0, cols, tile[r]);
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t r = 0; r < rows; ++r) dst[j * ld + r] = tile[r][j];
  }
}

// The left operand of a product: its own, or the call's.
const at::Tensor& left_of(const RowsProduct& product, const at::Tensor& a) {
  return product.a.defined() ? product.a : a;
}

// A block of b's rows, [b0, b0 + count), is packed once for every product; the rows of each
// left operand that the products read against it, [a0, a1), are transposed once (for all the
// products of that operand); then each product sums over its runs' parts in the block
// (segments of one GEMM, in registers).
template <typename scalar_t>
void matmul_rows_typed(const std::vector<RowsProduct>& products, const at::Tensor& a,
                       const at::Tensor& b) {
  const int64_t N = b.size(1), rows_b = b.size(0);
  const int64_t P = panel_width<scalar_t>(), panels = (N + P - 1) / P;
  const scalar_t* B = b.data_ptr<scalar_t>();
  const int64_t block = std::min(rows_b, kRowsPerBlock);
  at::Tensor packed = at::empty({packed_size<scalar_t>(block, N)}, b.options());  // b's block
  // The distinct left operands (products of the same one share its transposed rows), and for
  // each its rows a0 .. a1 - 1 that the block's runs read, as the columns of [M, a1 - a0].
  std::vector<const at::Tensor*> lefts;
  std::vector<size_t> left_of_product;
  for (const RowsProduct& product : products) {
    const at::Tensor* left = &left_of(product, a);
    size_t k = 0;
    while (k < lefts.size() && !lefts[k]->is_same(*left)) ++k;
    if (k == lefts.size()) lefts.push_back(left);
    left_of_product.push_back(k);
  }
  std::vector<at::Tensor> transposed(lefts.size(), at::empty({0}, a.options()));
  std::vector<int64_t> a0(lefts.size()), a1(lefts.size());
  std::vector<std::vector<KSegment>> segments(products.size());
  for (const RowsProduct& product : products) product.out.zero_();
  for (int64_t b0 = 0; b0 < rows_b; b0 += block) {
    const int64_t count = std::min(block, rows_b - b0);
    for (size_t k = 0; k < lefts.size(); ++k) {
      a0[k] = lefts[k]->size(0);  // none yet: a1 <= a0
      a1[k] = 0;
    }
    bool any = false;
    for (size_t i = 0; i < products.size(); ++i) {
      segments[i].clear();
      const size_t k = left_of_product[i];
      for (const RowRun& run : products[i].runs) {
        const int64_t lo = std::max(run.b_row, b0), hi = std::min(run.b_row + run.count, b0 + count);
        if (lo >= hi) continue;
        const int64_t a_row = run.a_row + lo - run.b_row;
        segments[i].push_back({a_row, lo - b0, hi - lo});  // a_col made relative to a0 below
        a0[k] = std::min(a0[k], a_row);
        a1[k] = std::max(a1[k], a_row + hi - lo);
        any = true;
      }
    }
    if (!any) continue;
    for (size_t k = 0; k < lefts.size(); ++k) {
      if (a1[k] <= a0[k]) continue;
      const int64_t span = a1[k] - a0[k], M = lefts[k]->size(1);
      if (transposed[k].numel() < M * span) transposed[k] = at::empty({M * span}, a.options());
      const scalar_t* A = lefts[k]->data_ptr<scalar_t>();
      scalar_t* at_ptr = transposed[k].data_ptr<scalar_t>();
      // rows a0 .. a1 - 1 as the columns of [M, span], in 16 x 16 tiles
      at::parallel_for(0, (span + kTile - 1) / kTile, 4, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
          const int64_t r0 = g * kTile, rows_here = std::min(kTile, span - r0);
          for (int64_t m0 = 0; m0 < M; m0 += kTile) {
            transpose_tile(A + (a0[k] + r0) * M, M, m0, rows_here, std::min(kTile, M - m0),
                           at_ptr + m0 * span + r0, span);
          }
        }
      });
    }
    scalar_t* packed_ptr = packed.data_ptr<scalar_t>();
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      pack_panels_range(B + b0 * N, N, count, begin * P, std::min(N, end * P),
                        packed_ptr + begin * count * P);
    });
    for (size_t i = 0; i < products.size(); ++i) {
      if (segments[i].empty()) continue;
      const size_t k = left_of_product[i];
      for (KSegment& segment : segments[i]) segment.a_col -= a0[k];
      matmul_packed_segments<scalar_t>(products[i].out.data_ptr<scalar_t>(), lefts[k]->size(1),
                                       N, transposed[k].data_ptr<scalar_t>(), a1[k] - a0[k],
                                       packed_ptr, count * P, segments[i], /*accumulate=*/true);
    }
  }
}
}  // namespace

void matmul_rows_out(const std::vector<RowsProduct>& products, const at::Tensor& a,
                     const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(b.dim() == 2 && b.is_contiguous());
  for (const RowsProduct& product : products) {
    const at::Tensor& left = left_of(product, a);
    TORCH_INTERNAL_ASSERT(left.dim() == 2 && left.is_contiguous() &&
                          left.scalar_type() == b.scalar_type());
    TORCH_INTERNAL_ASSERT(product.out.is_contiguous() && product.out.dim() == 2 &&
                          product.out.size(0) == left.size(1) && product.out.size(1) == b.size(1));
    for (const RowRun& run : product.runs) {
      TORCH_INTERNAL_ASSERT(run.count >= 0 && run.a_row >= 0 && run.b_row >= 0 &&
                            run.a_row + run.count <= left.size(0) &&
                            run.b_row + run.count <= b.size(0));
    }
  }
  if (b.size(1) == 0) return;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "tlstm_cpu_matmul_rows",
                             [&] { matmul_rows_typed<scalar_t>(products, a, b); });
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
