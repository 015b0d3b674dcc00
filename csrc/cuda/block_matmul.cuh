// A block's share of a small matrix product with one operand resident in shared memory, for
// the persistent (whole-recurrence) kernels of both cells. Plain device code and host sizing:
// no CUDA runtime calls, so tools/emulate_cuda can run it on the CPU.
//
// Each block keeps its rows of the resident operand w in shared memory for a whole sequence;
// a step's other operand x is staged from global memory in column chunks; each thread keeps a
// kTile x kTile tile of outputs in registers over an interleaved slice of the reduction, so one
// shared-memory load feeds kTile multiply-adds and a thread has kTile^2 independent sums in
// flight; the slices' partial sums are then added in a fixed order (no atomics: the same sums
// every run).
#pragma once

#include <algorithm>
#include <cstdint>

namespace tlstm {

constexpr int kPersistentThreads = 256;
constexpr int kTile = 4;                    // a thread's outputs: kTile rows of x by kTile of w
constexpr int64_t kStageBytes = 64 * 1024;  // the most shared memory the staged chunk of x takes
constexpr int64_t kMinSlice = 8;            // the fewest columns of x a slice of the sum takes
constexpr int64_t kMaxSlices = 64;          // the longest chain of adds of the slices' sums

__host__ __device__ inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }
__host__ __device__ inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// How a block computes out[b, r] = sum_k x[b, k] w[r, k] for b < B, r < R, k < K, with w
// resident in shared memory, and where its operands lie in the dynamic shared memory (bytes
// from its start): w [rows_w, K + 1], the staged x [rows_x, chunk + 1] (rows padded by one
// element against bank conflicts), the partial sums [kTile * kTile, items + 1], then `extra`
// bytes for the kernel's own use. Work item u = slice * tiles + tile computes one kTile x kTile
// tile over one slice of the reduction; partial[i * kTile + j, u] is its output (i, j), so the
// lanes of a warp store to consecutive words.
struct BlockMatmulShape {
  int64_t K;
  int64_t rows_x;   // B rounded up to kTile; the padding rows of x are zeros
  int64_t rows_w;   // R rounded up to kTile; the padding rows of w are zeros
  int64_t tiles;    // kTile x kTile output tiles
  int64_t slices;   // the reduction is split into this many interleaved slices
  int64_t items;    // tiles * slices
  int64_t chunk;    // columns of x staged at once
  int64_t x_offset, partial_offset, extra_offset, bytes;
};

// The offsets and total bytes of a shape whose sizes are set.
template <typename scalar_t, typename acc_t>
void place_block_matmul(BlockMatmulShape& s, int64_t extra_bytes) {
  s.x_offset = align16(s.rows_w * (s.K + 1) * int64_t(sizeof(scalar_t)));
  s.partial_offset = s.x_offset + align16(s.rows_x * (s.chunk + 1) * int64_t(sizeof(scalar_t)));
  s.extra_offset = s.partial_offset +
                   align16(int64_t(kTile) * kTile * (s.items + 1) * int64_t(sizeof(acc_t)));
  s.bytes = s.extra_offset + align16(extra_bytes);
}

template <typename scalar_t, typename acc_t>
BlockMatmulShape block_matmul_shape(int64_t B, int64_t R, int64_t K, int64_t extra_bytes) {
  BlockMatmulShape s;
  s.K = K;
  s.rows_x = round_up(std::max<int64_t>(B, 1), kTile);
  s.rows_w = round_up(R, kTile);
  s.tiles = (s.rows_x / kTile) * (s.rows_w / kTile);
  // enough slices to give every thread a work item, each at least kMinSlice columns long
  s.slices = std::max<int64_t>(1, std::min({kPersistentThreads / s.tiles,
                                            (K + kMinSlice - 1) / kMinSlice, kMaxSlices}));
  s.items = s.tiles * s.slices;
  const int64_t max_chunk =
      std::max<int64_t>(32, kStageBytes / (s.rows_x * int64_t(sizeof(scalar_t))) - 1);
  const int64_t chunks = (K + max_chunk - 1) / max_chunk;
  s.chunk = std::max<int64_t>(1, (K + chunks - 1) / std::max<int64_t>(chunks, 1));
  place_block_matmul<scalar_t, acc_t>(s, extra_bytes);
  return s;
}

// The operands of block_recurrent_matmul in a block's dynamic shared memory.
template <typename scalar_t, typename acc_t>
struct BlockMatmulSmem {
  scalar_t* w;        // [rows_w, K + 1]
  scalar_t* x;        // [rows_x, chunk + 1]
  acc_t* partial;     // [kTile * kTile, items + 1]
  unsigned char* extra;

  __device__ BlockMatmulSmem(unsigned char* shared, const BlockMatmulShape& s)
      : w(reinterpret_cast<scalar_t*>(shared)),
        x(reinterpret_cast<scalar_t*>(shared + s.x_offset)),
        partial(reinterpret_cast<acc_t*>(shared + s.partial_offset)),
        extra(shared + s.extra_offset) {}

  __device__ scalar_t& w_at(const BlockMatmulShape& s, int64_t r, int64_t k) const {
    return w[r * (s.K + 1) + k];
  }

  // Zeros in the staged rows past B, which no staging writes: their products are zeros.
  __device__ void zero_padding_rows(const BlockMatmulShape& s, int64_t B) const {
    for (int64_t idx = B * (s.chunk + 1) + threadIdx.x; idx < s.rows_x * (s.chunk + 1);
         idx += blockDim.x) {
      x[idx] = scalar_t(0);
    }
  }

  // out[b, r] after block_recurrent_matmul: slice 0's slot of its tile
  __device__ acc_t result(const BlockMatmulShape& s, int64_t b, int64_t r) const {
    const int64_t tile = b / kTile * (s.rows_w / kTile) + r / kTile;
    return partial[(b % kTile * kTile + r % kTile) * (s.items + 1) + tile];
  }
};

// out[b, r] = sum_k x[b, k] w[r, k] for x [B, K] in global memory, contiguous, read back with
// m.result(s, b, r). Work item u sums k = slice, slice + slices, ... of every staged chunk in
// registers and stores its tile once; the slices are then added in slice order. Every thread
// of the block calls it; it returns with the block synchronised. 32-bit offsets inside shared
// memory (it holds at most 227 KB).
template <typename scalar_t, typename acc_t>
__device__ void block_recurrent_matmul(const scalar_t* __restrict__ x, int64_t B,
                                       const BlockMatmulShape& s,
                                       const BlockMatmulSmem<scalar_t, acc_t>& m) {
  const int K = static_cast<int>(s.K), chunk = static_cast<int>(s.chunk);
  const int ldx = chunk + 1, ldw = K + 1, plane = static_cast<int>(s.items) + 1;
  const int tiles = static_cast<int>(s.tiles), tiles_w = static_cast<int>(s.rows_w / kTile);
  const int slices = static_cast<int>(s.slices), items = static_cast<int>(s.items);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int rows = static_cast<int>(B);
  // Rounds of blockDim work items (one unless B is large); a single chunk is staged once.
  for (int first = 0; first < items; first += blockDim.x) {
    const int u = first + threadIdx.x;
    const int tile = u % tiles, slice = u / tiles;
    const int b0 = tile / tiles_w * kTile, r0 = tile % tiles_w * kTile;
    acc_t sum[kTile][kTile] = {};
    for (int c0 = 0; c0 < K; c0 += chunk) {
      const int width = K - c0 < chunk ? K - c0 : chunk;
      if (first == 0 || chunk < K) {
        // a warp copies 32 consecutive columns of one row at a time
        const int segments = (width + 31) / 32;
        for (int seg = warp; seg < rows * segments; seg += warps) {
          const int b = seg / segments, k = (seg - b * segments) * 32 + lane;
          if (k < width) m.x[b * ldx + k] = x[int64_t(b) * K + c0 + k];
        }
        __syncthreads();
      }
      if (u < items) {
        const scalar_t* x_rows[kTile];
        const scalar_t* w_rows[kTile];
#pragma unroll
        for (int q = 0; q < kTile; ++q) {
          x_rows[q] = m.x + (b0 + q) * ldx;
          w_rows[q] = m.w + (r0 + q) * ldw + c0;
        }
        for (int k = slice; k < width; k += slices) {
          acc_t xv[kTile], wv[kTile];
#pragma unroll
          for (int q = 0; q < kTile; ++q) {
            xv[q] = acc_t(x_rows[q][k]);
            wv[q] = acc_t(w_rows[q][k]);
          }
#pragma unroll
          for (int i = 0; i < kTile; ++i) {
#pragma unroll
            for (int j = 0; j < kTile; ++j) sum[i][j] += xv[i] * wv[j];
          }
        }
      }
      if (chunk < K) __syncthreads();  // every thread is done with this chunk of x
    }
    if (u < items) {
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
#pragma unroll
        for (int j = 0; j < kTile; ++j) m.partial[(i * kTile + j) * plane + u] = sum[i][j];
      }
    }
  }
  __syncthreads();
  // Output (i, j) of a tile: its slices' sums in slice order, into slice 0's slot.
  for (int idx = threadIdx.x; idx < tiles * kTile * kTile; idx += blockDim.x) {
    const int ij = idx / tiles, tile = idx - ij * tiles;
    acc_t* p = m.partial + ij * plane + tile;
    acc_t v = p[0];
    for (int slice = 1; slice < slices; ++slice) v += p[slice * tiles];
    p[0] = v;
  }
  __syncthreads();
}

}  // namespace tlstm
