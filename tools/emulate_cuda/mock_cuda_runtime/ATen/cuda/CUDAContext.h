// A scripted stand-in for the CUDA runtime calls of csrc/cuda/persistent_launch.cuh (device
// properties, occupancy, the cooperative launch), so that launch_driver.cpp can run its
// decisions on a machine without a GPU. It shadows ATen's header of the same name.
#pragma once
#include <c10/util/Exception.h>

#include <cstddef>
#include <functional>

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct MockStream*;
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct cudaDeviceProp {
  int multiProcessorCount;
  int cooperativeLaunch;
  size_t sharedMemPerBlockOptin;
};

namespace mock {
// The device, the occupancy rule (blocks per SM at a block's dynamic shared memory), what the
// launch returns, and what was called.
struct Runtime {
  cudaDeviceProp props{132, 1, 227 * 1024};
  std::function<int(size_t)> blocks_per_sm = [](size_t) { return 1; };
  cudaError_t launch_result = cudaSuccess;
  int launches = 0, last_error_calls = 0, max_smem_attribute = -1;
  unsigned launched_blocks = 0, launched_threads = 0;
  size_t launched_smem = 0;
  cudaError_t pending = cudaSuccess;  // the sticky "last error" a failed launch leaves
};
inline Runtime runtime;
}  // namespace mock

namespace at::cuda {
inline const cudaDeviceProp* getCurrentDeviceProperties() { return &mock::runtime.props; }
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  mock::runtime.max_smem_attribute = value;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int,
                                                          size_t smem) {
  *blocks = mock::runtime.blocks_per_sm(smem);
  return cudaSuccess;
}

inline cudaError_t cudaLaunchCooperativeKernel(const void*, dim3 grid, dim3 block, void**,
                                               size_t smem, cudaStream_t) {
  auto& r = mock::runtime;
  ++r.launches;
  r.launched_blocks = grid.x;
  r.launched_threads = block.x;
  r.launched_smem = smem;
  r.pending = r.launch_result;
  return r.launch_result;
}

inline cudaError_t cudaGetLastError() {
  ++mock::runtime.last_error_calls;
  const cudaError_t e = mock::runtime.pending;
  mock::runtime.pending = cudaSuccess;
  return e;
}
