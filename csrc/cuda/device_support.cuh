// What the device headers (tensorized_*.cuh, peephole_*.cuh, block_matmul.cuh) take from CUDA
// beyond the language: cooperative groups, and a kernel's dynamic shared memory. So that
// tools/emulate_cuda can compile the very same headers on the CPU, its cuda_host_shim.h defines
// TLSTM_EMULATED_CUDA and its own TLSTM_DYNAMIC_SHARED (the emulated block's shared memory).
#pragma once

namespace tlstm {
// Threads of a block of the step kernels (the persistent kernels': kPersistentThreads).
constexpr int kThreads = 256;
}  // namespace tlstm

#ifndef TLSTM_EMULATED_CUDA
#include <cooperative_groups.h>

// Declares `name`, the block's dynamic shared memory (bytes, 16-byte aligned).
#define TLSTM_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
