// A block's share of a small matrix product with one operand resident in shared memory, for
// the persistent (whole-recurrence) kernels of both cells. Plain device code and host sizing:
// no CUDA runtime calls, so tools/emulate_cuda can run it on the CPU.
//
// Each block keeps its rows of the resident operand w in shared memory for a whole sequence;
// a step's other operand x is staged from global memory in column chunks; each thread keeps a
// kTile x kTile tile of outputs in registers over an interleaved slice of the reduction, read in
// groups of kGroup columns, so one vector load from shared memory feeds kTile x kGroup
// multiply-adds and a thread has kTile^2 independent sums in flight; the slices' partial sums
// are then added in a fixed order (no atomics: the same sums every run).
#pragma once

#include <algorithm>
#include <cstdint>

namespace tlstm {

constexpr int kPersistentThreads = 256;
constexpr int kTile = 4;                    // a thread's outputs: kTile rows of x by kTile of w
constexpr int kGroup = 4;                   // columns a thread reads at once (one vector load)
constexpr int64_t kStageBytes = 64 * 1024;  // about the most shared memory the staged x takes
constexpr int64_t kMinSlice = 8;            // the fewest columns of x a slice of the sum takes
constexpr int64_t kMaxSlices = 64;          // the longest chain of adds of the slices' sums

__host__ __device__ inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }
__host__ __device__ inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// kGroup consecutive elements, read from shared memory with one (or, for double, two) vector
// loads: rows of w and x start on this alignment and groups start at multiples of kGroup.
template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kGroup > 16 ? 16 : sizeof(scalar_t) * kGroup) Group {
  scalar_t v[kGroup];
};

// Row stride, in elements, of a shared-memory matrix with n used columns: the smallest odd
// multiple of a vector (alignof(Group)) at least n elements long. Consecutive rows then start
// in different vectors of the 128 bytes of banks (an odd multiplier is invertible modulo the
// 128 / vector rows a wavefront of vector loads serves), so the lanes of a warp reading the
// same columns of different rows do not conflict.
template <typename scalar_t>
int64_t padded_row_stride(int64_t n) {
  const int64_t elem = sizeof(scalar_t), vec = alignof(Group<scalar_t>);
  int64_t vectors = (n * elem + vec - 1) / vec;
  if (vectors % 2 == 0) ++vectors;
  return vectors * vec / elem;
}

// How a block computes out[b, r] = sum_k x[b, k] w[r, k] for b < B, r < R, k < K, with w
// resident in shared memory, and where its operands lie in the dynamic shared memory (bytes
// from its start): w [rows_w, ldw], the staged x [rows_x, ldx] (the columns past K, and the
// rows past B and R, are zeros), the partial sums [kTile * kTile, items + 1], then `extra`
// bytes for the kernel's own use. Work item u = slice * tiles + tile computes one kTile x kTile
// tile over one slice of the reduction: tile (bt, rt) holds rows bt + i * tiles_x of x and
// rows rt + j * tiles_w of w (strided, so that the lanes of a warp read rows in different
// banks); partial[i * kTile + j, u] is its output (i, j), so the lanes store consecutive words.
struct BlockMatmulShape {
  int64_t K;
  int64_t rows_x;   // B rounded up to kTile
  int64_t rows_w;   // R rounded up to kTile
  int64_t tiles_x, tiles_w, tiles;  // rows_x / kTile, rows_w / kTile, their product
  int64_t slices;   // the reduction is split into this many interleaved slices of kGroup columns
  int64_t items;    // tiles * slices
  int64_t chunk;    // columns of x staged at once, a multiple of kGroup
  int64_t ldw, ldx; // row strides of w and of the staged x (padded_row_stride)
  int64_t x_offset, partial_offset, extra_offset, bytes;
};

// The strides, offsets and total bytes of a shape whose sizes are set (chunk is rounded up to
// a multiple of kGroup).
template <typename scalar_t, typename acc_t>
void place_block_matmul(BlockMatmulShape& s, int64_t extra_bytes) {
  s.chunk = round_up(std::max<int64_t>(s.chunk, 1), kGroup);
  s.ldw = padded_row_stride<scalar_t>(round_up(s.K, kGroup));
  s.ldx = padded_row_stride<scalar_t>(s.chunk);
  s.x_offset = align16(s.rows_w * s.ldw * int64_t(sizeof(scalar_t)));
  s.partial_offset = s.x_offset + align16(s.rows_x * s.ldx * int64_t(sizeof(scalar_t)));
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
  s.tiles_x = s.rows_x / kTile;
  s.tiles_w = s.rows_w / kTile;
  s.tiles = s.tiles_x * s.tiles_w;
  // enough slices to give every thread a work item, each at least kMinSlice columns long
  s.slices = std::max<int64_t>(1, std::min({kPersistentThreads / s.tiles,
                                            (K + kMinSlice - 1) / kMinSlice, kMaxSlices}));
  s.items = s.tiles * s.slices;
  const int64_t max_chunk = std::max<int64_t>(
      32, kStageBytes / (s.rows_x * int64_t(sizeof(scalar_t))) / kGroup * kGroup);
  const int64_t chunks = (K + max_chunk - 1) / max_chunk;
  s.chunk = (K + chunks - 1) / std::max<int64_t>(chunks, 1);
  place_block_matmul<scalar_t, acc_t>(s, extra_bytes);
  return s;
}

// The operands of block_recurrent_matmul in a block's dynamic shared memory.
template <typename scalar_t, typename acc_t>
struct BlockMatmulSmem {
  scalar_t* w;        // [rows_w, ldw]
  scalar_t* x;        // [rows_x, ldx]
  acc_t* partial;     // [kTile * kTile, items + 1]
  unsigned char* extra;

  __device__ BlockMatmulSmem(unsigned char* shared, const BlockMatmulShape& s)
      : w(reinterpret_cast<scalar_t*>(shared)),
        x(reinterpret_cast<scalar_t*>(shared + s.x_offset)),
        partial(reinterpret_cast<acc_t*>(shared + s.partial_offset)),
        extra(shared + s.extra_offset) {}

  __device__ scalar_t& w_at(const BlockMatmulShape& s, int64_t r, int64_t k) const {
    return w[r * s.ldw + k];
  }

  // Zeros where no staging and no load of w writes: the staged rows past B and the columns of
  // w past K (their products are zeros). Once, before the first block_recurrent_matmul.
  __device__ void zero_padding(const BlockMatmulShape& s, int64_t B) const {
    for (int64_t idx = B * s.ldx + threadIdx.x; idx < s.rows_x * s.ldx; idx += blockDim.x) {
      x[idx] = scalar_t(0);
    }
    const int64_t pad = s.ldw - s.K;
    for (int64_t idx = threadIdx.x; idx < s.rows_w * pad; idx += blockDim.x) {
      w[idx / pad * s.ldw + s.K + idx % pad] = scalar_t(0);
    }
  }

  // out[b, r] after block_recurrent_matmul: slice 0's slot of its tile
  __device__ acc_t result(const BlockMatmulShape& s, int64_t b, int64_t r) const {
    const int64_t tile = b % s.tiles_x * s.tiles_w + r % s.tiles_w;
    const int64_t ij = b / s.tiles_x * kTile + r / s.tiles_w;
    return partial[ij * (s.items + 1) + tile];
  }
};

// out[b, r] = sum_k x[b, k] w[r, k] for x [B, K] in global memory, contiguous, read back with
// m.result(s, b, r). Work item u sums the column groups slice, slice + slices, ... of every
// staged chunk in registers (each group: one vector load per row of x and of w, then kTile^2
// x kGroup multiply-adds) and stores its tile once; the slices are then added in slice order.
// Every thread of the block calls it; it returns with the block synchronised. 32-bit offsets
// inside shared memory (it holds at most 227 KB).
template <typename scalar_t, typename acc_t>
__device__ void block_recurrent_matmul(const scalar_t* x, int64_t B, const BlockMatmulShape& s,
                                       const BlockMatmulSmem<scalar_t, acc_t>& m) {
  const int K = static_cast<int>(s.K), chunk = static_cast<int>(s.chunk);
  const int ldx = static_cast<int>(s.ldx), ldw = static_cast<int>(s.ldw);
  const int plane = static_cast<int>(s.items) + 1;
  const int tiles = static_cast<int>(s.tiles), tiles_x = static_cast<int>(s.tiles_x);
  const int tiles_w = static_cast<int>(s.tiles_w);
  const int slices = static_cast<int>(s.slices), items = static_cast<int>(s.items);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int rows = static_cast<int>(B);
  // Rounds of blockDim work items (one unless B is large); a single chunk is staged once.
  for (int first = 0; first < items; first += blockDim.x) {
    const int u = first + threadIdx.x;
    const int tile = u % tiles, slice = u / tiles;
    const int bt = tile / tiles_w, rt = tile % tiles_w;
    acc_t sum[kTile][kTile] = {};
    for (int c0 = 0; c0 < K; c0 += chunk) {
      const int width = K - c0 < chunk ? K - c0 : chunk;
      const int groups = (width + kGroup - 1) / kGroup;  // the last one padded with zeros
      if (first == 0 || chunk < K) {
        // a warp copies 32 consecutive columns of one row at a time
        const int padded = groups * kGroup, segments = (padded + 31) / 32;
        for (int seg = warp; seg < rows * segments; seg += warps) {
          const int b = seg / segments, k = (seg - b * segments) * 32 + lane;
          if (k < padded) m.x[b * ldx + k] = k < width ? x[int64_t(b) * K + c0 + k] : scalar_t(0);
        }
        __syncthreads();
      }
      if (u < items) {
        const scalar_t* x_rows[kTile];
        const scalar_t* w_rows[kTile];
#pragma unroll
        for (int q = 0; q < kTile; ++q) {
          x_rows[q] = m.x + (bt + q * tiles_x) * ldx;
          w_rows[q] = m.w + (rt + q * tiles_w) * ldw + c0;
        }
        for (int g = slice; g < groups; g += slices) {
          Group<scalar_t> xv[kTile], wv[kTile];
#pragma unroll
          for (int q = 0; q < kTile; ++q) {
            xv[q] = *reinterpret_cast<const Group<scalar_t>*>(x_rows[q] + g * kGroup);
            wv[q] = *reinterpret_cast<const Group<scalar_t>*>(w_rows[q] + g * kGroup);
          }
#pragma unroll
          for (int e = 0; e < kGroup; ++e) {
#pragma unroll
            for (int i = 0; i < kTile; ++i) {
#pragma unroll
              for (int j = 0; j < kTile; ++j) sum[i][j] += acc_t(xv[i].v[e]) * acc_t(wv[j].v[e]);
            }
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
