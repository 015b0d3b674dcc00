// Host side of the kernels' launches, for both cells: the grid of a grid-stride step kernel,
// and for the persistent (cooperative, whole-recurrence) kernels which recurrence the
// environment asks for, how many output rows a block takes so that every block is resident at
// once, and the cooperative launch.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "block_matmul.cuh"

namespace tlstm {

// Blocks of a grid-stride loop over n items, per_block items a block: at most blocks_per_sm
// blocks on each SM of the current device (the loop strides over the rest), and at least one.
inline unsigned int blocks_for(int64_t n, int64_t per_block, int64_t blocks_per_sm) {
  const int64_t max_blocks =
      int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * blocks_per_sm;
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min((n + per_block - 1) / per_block, max_blocks)));
}

// Which recurrence the CUDA ops run: TLSTM_CUDA_RECURRENCE = auto (default), stepwise, persistent.
enum class Recurrence { Auto, Stepwise, Persistent };

inline Recurrence recurrence_from_env() {
  const char* value = std::getenv("TLSTM_CUDA_RECURRENCE");
  const std::string v = value ? value : "auto";
  if (v == "auto") return Recurrence::Auto;
  if (v == "stepwise") return Recurrence::Stepwise;
  if (v == "persistent") return Recurrence::Persistent;
  TORCH_CHECK(false, "TLSTM_CUDA_RECURRENCE must be auto, stepwise or persistent, got \"", v, "\"");
}

// Whether TLSTM_CUDA_RECURRENCE=auto may pick the persistent kernels by each cell's size rule. A
// CUDA path becomes a default only once it has passed the CUDA tests and compute-sanitizer on a
// GPU; the persistent kernels of both cells have been rewritten since their last GPU run
// (benchmarks/README.md keeps what ran where), so until then auto runs the steps and
// TLSTM_CUDA_RECURRENCE=persistent opts in.
constexpr bool kPersistentByDefault = false;

// Whether to try the persistent kernels: as TLSTM_CUDA_RECURRENCE forces, else by_default (the
// cell's size rule) where kPersistentByDefault allows it.
inline bool persistent_wanted(bool by_default) {
  switch (recurrence_from_env()) {
    case Recurrence::Stepwise:
      return false;
    case Recurrence::Persistent:
      return true;
    default:
      return kPersistentByDefault && by_default;
  }
}

// Output rows per block (units) of a persistent launch that splits `outputs` rows of the resident
// operand over its blocks, or 0 if it cannot run (every block must be resident at once and its
// shared memory must fit); `shape` and `blocks` are those of the launch. shape_for(w) is the
// block's BlockMatmulShape at w rows per block; units are a multiple of `granularity` (kTile
// where a block's rows of w are its units, which would otherwise be padded to kTile with zeros:
// the same work per block, on more blocks, each staging all of x).
template <typename Kernel, typename ShapeFor>
int64_t persistent_units(Kernel kernel, int64_t outputs, int64_t granularity,
                         const ShapeFor& shape_for, BlockMatmulShape& shape, int64_t& blocks) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  if (!props->cooperativeLaunch) return 0;
  const int64_t sms = props->multiProcessorCount;
  // Always the device's maximum: the same value from every caller, so concurrent calls agree.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(props->sharedMemPerBlockOptin)));
  const int64_t first = round_up(std::max<int64_t>(1, (outputs + sms - 1) / sms), granularity);
  for (int64_t w = first;; w *= 2) {
    blocks = (outputs + w - 1) / w;
    shape = shape_for(w);
    // wider slices only need more
    if (shape.bytes > int64_t(props->sharedMemPerBlockOptin)) return 0;
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, kernel, kPersistentThreads, static_cast<size_t>(shape.bytes)));
    if (int64_t(per_sm) * sms >= blocks) return w;
    if (w >= outputs) return 0;  // one block already
  }
}

// After sizing: whether they run (units > 0); forced persistent that cannot run is an error.
inline bool persistent_fits(int64_t units) {
  TORCH_CHECK(units > 0 || recurrence_from_env() != Recurrence::Persistent,
              "TLSTM_CUDA_RECURRENCE=persistent, but the persistent kernel cannot run this size "
              "on this GPU (shared memory or co-residency)");
  return units > 0;
}

// Launches kernel(params) on `blocks` blocks of kPersistentThreads, all resident at once, on the
// current stream. Returns false, with nothing launched, if the driver refuses the grid as too
// large for co-residency at run time (a GPU shared with other processes, MPS limits), unless
// TLSTM_CUDA_RECURRENCE=persistent forces the kernel; the caller then runs the steps. Any other
// launch error is raised.
template <typename Params>
bool launch_cooperative(void (*kernel)(Params), int64_t blocks, const BlockMatmulShape& shape,
                        Params params) {
  void* args[] = {&params};
  const cudaError_t err = cudaLaunchCooperativeKernel(
      reinterpret_cast<void*>(kernel), dim3(static_cast<unsigned int>(blocks)),
      dim3(kPersistentThreads), args, static_cast<size_t>(shape.bytes),
      at::cuda::getCurrentCUDAStream());
  if (err == cudaErrorCooperativeLaunchTooLarge &&
      recurrence_from_env() != Recurrence::Persistent) {
    (void)cudaGetLastError();  // a launch configuration error: clears it, nothing ran
    return false;
  }
  C10_CUDA_CHECK(err);
  return true;
}

// Sizes and launches a persistent kernel whose blocks split `outputs` rows of the resident
// operand (persistent_units, with shape_for and granularity as there); make_params(units,
// shape) gives its parameters. False, with nothing launched, if it cannot run here; then the
// caller runs the steps.
template <typename Params, typename ShapeFor, typename MakeParams>
bool launch_persistent(void (*kernel)(Params), int64_t outputs, int64_t granularity,
                       const ShapeFor& shape_for, const MakeParams& make_params) {
  BlockMatmulShape shape{};
  int64_t blocks = 0;
  const int64_t units = persistent_units(kernel, outputs, granularity, shape_for, shape, blocks);
  if (!persistent_fits(units)) return false;
  return launch_cooperative(kernel, blocks, shape, make_params(units, shape));
}

}  // namespace tlstm
