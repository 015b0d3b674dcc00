// out = a b for 2-D CPU tensors, a row-major contiguous and b in any layout, on the packed-panel
// GEMM (packed_gemm.h): b is packed once per call, the work is split over threads by chunks of
// rows (or, for short matrices, by slices of column panels), with the running CPU's vector width.
#pragma once

#include <torch/types.h>

#include <vector>

#include "../matmul.h"

namespace tlstm {
namespace cpu {

void matmul_out(at::Tensor& out,        // [M, N]
                const at::Tensor& a,    // [M, K]
                const at::Tensor& b);   // [K, N], any layout

// b [K, N] packed once, for products with many left operands.
std::unique_ptr<RepeatedRightOperand> prepare_right_operand(const at::Tensor& b);

// Each product's out [M, N] = A^T B over the rows its runs name (matmul.h's RowsProduct), the
// products over rows of the same a [*, M] and b [*, N] (the tLSTM's weight gradients, one per
// tap), without gathering rows into new tensors: a block of b's rows at a time is packed once
// for all the products, the rows of a they read against it transposed once, into buffers
// reused block after block; a product's runs in the block are one GEMM's segments.
void matmul_rows_out(const std::vector<RowsProduct>& products, const at::Tensor& a,
                     const at::Tensor& b);

// Rows (steps x batch) of the input projection the CPU kernels compute at a time in inference
// (the step kernels' inference_chunk_rows): the chunk's product is still in the cache when
// its steps read it, and the buffer, reused chunk after chunk, is small enough for the C
// library to serve it from memory it already holds.
constexpr int64_t kInferenceChunkRows = 256;

}  // namespace cpu
}  // namespace tlstm
