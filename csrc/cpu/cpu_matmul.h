// out = a b for row-major contiguous 2-D CPU tensors, on the packed-panel GEMM (packed_gemm.h):
// b is packed once per call, the work is split over threads by chunks of rows (or, for short
// matrices, by slices of column panels), with the running CPU's vector width.
#pragma once

#include <torch/types.h>

#include <vector>

#include "../matmul.h"

namespace tlstm {
namespace cpu {

void matmul_out(at::Tensor& out,        // [M, N]
                const at::Tensor& a,    // [M, K]
                const at::Tensor& b);   // [K, N]

// b [K, N] packed once, for products with many left operands.
std::unique_ptr<RepeatedRightOperand> prepare_right_operand(const at::Tensor& b);

// out [M, N] (+)= A^T B for A [K, M] and B [K, N] given by their rows: row k of A is row
// a_rows[k] of a (a [*, M] row-major contiguous), row k of B row b_rows[k] of b [*, N]. The
// products over gathered rows (the tLSTM's weight gradients) without gathering them into new
// tensors: a block of rows at a time is transposed (A) and packed (B) into buffers of the
// block's size, reused block after block.
void matmul_rows_out(at::Tensor& out, const at::Tensor& a, const std::vector<int64_t>& a_rows,
                     const at::Tensor& b, const std::vector<int64_t>& b_rows, bool accumulate);

// Rows (steps x batch) of the input projection the CPU kernels compute at a time in inference
// (the step kernels' inference_chunk_rows): the chunk's product is still in the cache when
// its steps read it, and the buffer, reused chunk after chunk, is small enough for the C
// library to serve it from memory it already holds.
constexpr int64_t kInferenceChunkRows = 256;

}  // namespace cpu
}  // namespace tlstm
