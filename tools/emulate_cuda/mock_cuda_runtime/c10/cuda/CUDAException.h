// Stand-in for c10's CUDA error check, over the scripted runtime (see ATen/cuda/CUDAContext.h).
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(expr)                                                       \
  do {                                                                             \
    const cudaError_t mock_error = (expr);                                         \
    TORCH_CHECK(mock_error == cudaSuccess, "CUDA error ", int(mock_error));        \
  } while (0)
