// A small single-threaded GEMM for the recurrent term of the CPU kernels: C (+)= A B, where B
// is a weight matrix packed once per op call into column panels, so that the per-step calls
// neither repack the weight (as a BLAS call does every time) nor pay a library call's set-up.
// Each thread runs it on its own slice of columns (see peephole_lstm_cpu.cpp).
//
// The register tile is kRows rows x 2 vectors, written with GCC/Clang vector extensions whose
// width is the running CPU's (cpu_capability.h): callers run gemm_packed<T, Isa> inside
// run_for_cpu, and pack with the panel width of the same Isa (panel_width<T>()). On one core of
// the development machine (AMD EPYC, Zen 4) the float32 [32, 256] x [256, 1024] product runs at
// ~38 GFLOP/s with SSE2, ~90 with AVX2 and ~110 with AVX-512.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_capability.h"

namespace tlstm {
namespace cpu {

template <typename T, class Isa>
struct PackedGemmTraits {
  static constexpr int64_t kLanes = Isa::kVectorBytes / sizeof(T);
  static constexpr int64_t kPanel = 2 * kLanes;  // columns of one packed panel
  // rows of the register tile: 2 * kRows accumulators and two registers for the panel's row,
  // of the 16 vector registers of SSE2 and AVX2 or the 32 of AVX-512. AVX-512 takes 8 rows:
  // with 4 (8 accumulators) two FMA units of 4 cycles' latency wait on their results; on an
  // Intel Xeon (Sapphire Rapids class) 8 rows ran [16, 128] x [128, 515] at 140 GFLOP/s
  // against 90, and [32, 256] x [256, 1024] at 160 against 123.
  static constexpr int kRows = Isa::kVectorBytes == 64 ? 8 : (Isa::kVectorBytes == 32 ? 6 : 4);
  typedef T Vec __attribute__((vector_size(Isa::kVectorBytes)));
};

// Columns of a packed panel for the running CPU.
template <typename T>
int64_t panel_width() {
  return 2 * vector_bytes() / int64_t(sizeof(T));
}

// Elements of B [K, N] once packed: ceil(N / kPanel) panels of [K, kPanel], zero-padded.
template <typename T>
int64_t packed_size(int64_t K, int64_t N) {
  const int64_t P = panel_width<T>();
  return (N + P - 1) / P * K * P;
}

// A packed panel's row: `cols` values of src, zeros up to the panel's width P. A whole row is
// a copy of a size known here (one of the vector widths: inlined moves); a library call per
// row of 128 bytes was a tenth of a tLSTM training step.
template <typename T>
inline void pack_panel_row(const T* src, int64_t cols, int64_t P, T* dst) {
  if (cols == P) {
    switch (P * int64_t(sizeof(T))) {
      case 128: std::memcpy(dst, src, 128); return;
      case 64: std::memcpy(dst, src, 64); return;
      case 32: std::memcpy(dst, src, 32); return;
      default: break;
    }
  }
  std::copy_n(src, cols, dst);
  std::fill(dst + cols, dst + P, T(0));
}

// Packs the columns [n_begin, n_end) of B [K, *] (row-major, leading dimension ldb; n_begin a
// multiple of the panel width) into `packed`, panel after panel, in panels of the running
// CPU's width.
template <typename T>
void pack_panels_range(const T* B, int64_t ldb, int64_t K, int64_t n_begin, int64_t n_end,
                       T* packed) {
  const int64_t P = panel_width<T>();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += P) {
    const int64_t cols = std::min(P, n_end - n0);
    for (int64_t k = 0; k < K; ++k, packed += P) pack_panel_row(B + k * ldb + n0, cols, P, packed);
  }
}

// All the columns [0, N) of B.
template <typename T>
void pack_panels(const T* B, int64_t ldb, int64_t K, int64_t N, T* packed) {
  pack_panels_range(B, ldb, K, 0, N, packed);
}

// All the columns of B [K, N] in any layout, element (k, n) at B[k * s0 + n * s1]: rows of
// contiguous values are copied as they are; otherwise (e.g. a transposed weight, read as it is
// instead of copied into a transposed tensor first) column after column, each read from top
// to bottom (for a transposed weight, a contiguous run that the hardware prefetches) into its
// slot of the panel's rows, the panel being in the cache meanwhile. (16 rows of all the
// panel's columns at a time, a cache line from each of 32 places, waited on every line.)
template <typename T>
void pack_panels_strided(const T* B, int64_t s0, int64_t s1, int64_t K, int64_t N, T* packed) {
  if (s1 == 1 || N == 1) return pack_panels(B, s0, K, N, packed);
  const int64_t P = panel_width<T>();
  for (int64_t n0 = 0; n0 < N; n0 += P, packed += K * P) {
    const int64_t cols = std::min(P, N - n0);
    for (int64_t j = 0; j < P; ++j) {
      const T* column = B + (n0 + j) * s1;
      if (j < cols) {
        for (int64_t k = 0; k < K; ++k) packed[k * P + j] = column[k * s0];
      } else {
        for (int64_t k = 0; k < K; ++k) packed[k * P + j] = T(0);
      }
    }
  }
}

// A part of the sum over k of a product: A's columns a_col .. a_col + count - 1 against the
// packed rows b_row .. b_row + count - 1 of B (a product over rows that are not contiguous is a
// list of them, summed in registers: gemm_packed_segments).
struct KSegment {
  int64_t a_col, b_row, count;
};

namespace detail {

// C[kRows, kPanel] (+)= A[kRows, K] Bp[K, kPanel] for one panel, K the segments' sum; only the
// first `cols` columns of C are read and written. kVectors = 1 for a last panel of at most one
// vector's columns (the tLSTM's 4M + Kq gate columns end in one of Kq < a vector): it reads the
// panel's first vector only, the other being zero padding, and does half the multiply-adds.
template <typename T, class Isa, int kRows, int kVectors = 2>
inline __attribute__((always_inline)) void panel_kernel(const KSegment* segments,
                                                        int64_t segment_count,
                                                        const T* __restrict A, int64_t lda,
                                                        const T* __restrict Bp,
                                                        T* __restrict C, int64_t ldc, int64_t cols,
                                                        bool accumulate) {
  using Traits = PackedGemmTraits<T, Isa>;
  using Vec = typename Traits::Vec;
  constexpr int64_t L = Traits::kLanes;
  constexpr int64_t P = Traits::kPanel;
  static_assert(kVectors == 1 || kVectors == 2, "a panel is two vectors wide");
  Vec acc[kRows][2];  // (acc[r][1] unused with one vector)
  T tile[kRows][P];   // C's tile for a partial panel
  for (int r = 0; r < kRows; ++r) {
    if (accumulate && cols == P) {
      std::memcpy(&acc[r][0], C + r * ldc, sizeof(Vec));
      if constexpr (kVectors == 2) std::memcpy(&acc[r][1], C + r * ldc + L, sizeof(Vec));
    } else if (accumulate) {
      std::fill(tile[r], tile[r] + P, T(0));
      std::copy_n(C + r * ldc, cols, tile[r]);
      std::memcpy(&acc[r][0], tile[r], sizeof(Vec));
      if constexpr (kVectors == 2) std::memcpy(&acc[r][1], tile[r] + L, sizeof(Vec));
    } else {
      acc[r][0] = Vec{};
      if constexpr (kVectors == 2) acc[r][1] = Vec{};
    }
  }
  // (one body per width, with named registers: through loops over the vectors, GCC kept the
  // accumulators in memory and the product ran at two thirds of the speed)
  for (int64_t i = 0; i < segment_count; ++i) {
    const T* __restrict As = A + segments[i].a_col;
    const T* __restrict Bs = Bp + segments[i].b_row * P;
    if constexpr (kVectors == 2) {
      for (int64_t k = 0; k < segments[i].count; ++k) {
        Vec b0, b1;
        std::memcpy(&b0, Bs + k * P, sizeof(Vec));
        std::memcpy(&b1, Bs + k * P + L, sizeof(Vec));
        for (int r = 0; r < kRows; ++r) {
          const T a = As[r * lda + k];
          acc[r][0] += a * b0;
          acc[r][1] += a * b1;
        }
      }
    } else {
      for (int64_t k = 0; k < segments[i].count; ++k) {
        Vec b0;
        std::memcpy(&b0, Bs + k * P, sizeof(Vec));
        for (int r = 0; r < kRows; ++r) acc[r][0] += As[r * lda + k] * b0;
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    if (cols == P) {
      std::memcpy(C + r * ldc, &acc[r][0], sizeof(Vec));
      if constexpr (kVectors == 2) std::memcpy(C + r * ldc + L, &acc[r][1], sizeof(Vec));
    } else {
      std::memcpy(tile[r], &acc[r][0], sizeof(Vec));
      if constexpr (kVectors == 2) std::memcpy(tile[r] + L, &acc[r][1], sizeof(Vec));
      std::copy_n(tile[r], cols, C + r * ldc);
    }
  }
}

// The rows [0, M) of one panel's columns: tiles of kRows rows, then of 4, 2 and 1 for the last
// M % kRows.
template <typename T, class Isa, int kVectors>
inline __attribute__((always_inline)) void panel_rows(int64_t M, const KSegment* segments,
                                                      int64_t segment_count, const T* A,
                                                      int64_t lda, const T* packed, T* C,
                                                      int64_t ldc, int64_t cols,
                                                      bool accumulate) {
  constexpr int kRows = PackedGemmTraits<T, Isa>::kRows;
  // (explicit calls, not a generic lambda: through one, GCC kept the accumulators in memory
  // and the product ran ten times slower)
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) {
    panel_kernel<T, Isa, kRows, kVectors>(segments, segment_count, A + m * lda, lda, packed,
                                          C + m * ldc, ldc, cols, accumulate);
  }
  if constexpr (kRows > 4) {
    for (; m + 4 <= M; m += 4) {
      panel_kernel<T, Isa, 4, kVectors>(segments, segment_count, A + m * lda, lda, packed,
                                        C + m * ldc, ldc, cols, accumulate);
    }
  }
  for (; m + 2 <= M; m += 2) {
    panel_kernel<T, Isa, 2, kVectors>(segments, segment_count, A + m * lda, lda, packed,
                                      C + m * ldc, ldc, cols, accumulate);
  }
  if (m < M) {
    panel_kernel<T, Isa, 1, kVectors>(segments, segment_count, A + m * lda, lda, packed,
                                      C + m * ldc, ldc, cols, accumulate);
  }
}

}  // namespace detail

// C[M, N] (+)= the sum over the segments of A's columns times B's packed rows (KSegment), B
// packed in panels of `panel_stride` elements (K * panel width for a B of K rows). Leading
// dimensions lda, ldc are in elements; rows of A and C may be any stride >= their width. Call
// it inside run_for_cpu, with its Isa.
template <typename T, class Isa>
inline __attribute__((always_inline)) void gemm_packed_segments(
    int64_t M, int64_t N, const KSegment* segments, int64_t segment_count, const T* A,
    int64_t lda, const T* packed, int64_t panel_stride, T* C, int64_t ldc, bool accumulate) {
  using Traits = PackedGemmTraits<T, Isa>;
  constexpr int64_t P = Traits::kPanel;
  for (int64_t n0 = 0; n0 < N; n0 += P, packed += panel_stride) {
    const int64_t cols = N - n0 < P ? N - n0 : P;
    if (cols <= Traits::kLanes) {
      detail::panel_rows<T, Isa, 1>(M, segments, segment_count, A, lda, packed, C + n0, ldc, cols,
                                    accumulate);
    } else {
      detail::panel_rows<T, Isa, 2>(M, segments, segment_count, A, lda, packed, C + n0, ldc, cols,
                                    accumulate);
    }
  }
}

// C[M, N] = A[M, K] B (or C += A B with `accumulate`), B packed by pack_panels(.., K, N, ..)
// on the CPU that runs this.
template <typename T, class Isa>
inline __attribute__((always_inline)) void gemm_packed(int64_t M, int64_t N, int64_t K,
                                                       const T* A, int64_t lda, const T* packed,
                                                       T* C, int64_t ldc, bool accumulate) {
  const KSegment all{0, 0, K};
  gemm_packed_segments<T, Isa>(M, N, &all, 1, A, lda, packed, K * PackedGemmTraits<T, Isa>::kPanel,
                               C, ldc, accumulate);
}

}  // namespace cpu
}  // namespace tlstm
