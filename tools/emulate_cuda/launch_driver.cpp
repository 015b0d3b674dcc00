// Runs the host decisions of the persistent kernels' launch (csrc/cuda/persistent_launch.cuh)
// against a scripted CUDA runtime (mock_cuda_runtime/): which recurrence the environment asks
// for, how a launch is sized, and what happens when it cannot run or the driver refuses it:
// the caller gets false and runs the steps, unless TLSTM_CUDA_RECURRENCE=persistent forces the
// kernel, which is then a clear error. Prints each failed expectation and a count; exit 0 iff
// all hold. Built by tests/test_cuda_emulation.py with mock_cuda_runtime first on the path.
#include "cuda_host_shim.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cuda/persistent_launch.cuh"

using namespace tlstm;

namespace {

int checks = 0, failures = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

struct Params {
  int64_t units;
  int64_t bytes;
};
void persistent_kernel(Params) {}

// The error message of fn(), or "" if it returns.
template <class Fn>
std::string error_of(const Fn& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

void set_recurrence(const char* value) {
  if (value == nullptr) {
    unsetenv("TLSTM_CUDA_RECURRENCE");
  } else {
    setenv("TLSTM_CUDA_RECURRENCE", value, 1);
  }
}

void reset(const cudaDeviceProp& props) {
  mock::runtime = mock::Runtime{};
  mock::runtime.props = props;
}

// The peephole forward's sizing: B=16 rows of x, 4 rows of W_hh per unit, H units.
constexpr int64_t kH = 1024;
bool launch_peephole_like(int64_t granularity = 1, int64_t H = kH) {
  return launch_persistent(
      persistent_kernel, H, granularity,
      [H](int64_t w) { return block_matmul_shape<float, float>(16, 4 * w, H, 0); },
      [](int64_t units, const BlockMatmulShape& shape) { return Params{units, shape.bytes}; });
}

const cudaDeviceProp kH100{132, 1, 227 * 1024};

}  // namespace

int main() {
  // the environment's choice
  set_recurrence(nullptr);
  expect(persistent_wanted(true) == kPersistentByDefault && !persistent_wanted(false),
         "auto follows the size rule, once the persistent kernels may be a default");
  set_recurrence("stepwise");
  expect(!persistent_wanted(true), "stepwise never wants the persistent kernel");
  set_recurrence("persistent");
  expect(persistent_wanted(false), "persistent always wants it");
  set_recurrence("fast");
  const std::string bad = error_of([] { persistent_wanted(true); });
  expect(bad.find("TLSTM_CUDA_RECURRENCE must be auto, stepwise or persistent, got \"fast\"") !=
             std::string::npos,
         "an unknown TLSTM_CUDA_RECURRENCE names the variable, the choices and the value: " + bad);

  // fits: the launch takes every output, on at most one block per SM
  set_recurrence(nullptr);
  reset(kH100);
  expect(launch_peephole_like(), "a launch that fits runs");
  const auto& r = mock::runtime;
  const int64_t w = (kH + 131) / 132;  // 8 units a block
  expect(r.launches == 1 && r.launched_blocks == (kH + w - 1) / w &&
             r.launched_threads == unsigned(kPersistentThreads),
         "one launch of ceil(H / w) blocks of kPersistentThreads, got " +
             std::to_string(r.launched_blocks) + " blocks");
  expect(r.launched_smem == size_t(block_matmul_shape<float, float>(16, 4 * w, kH, 0).bytes),
         "the launch's shared memory is its shape's");
  expect(r.max_smem_attribute == int(kH100.sharedMemPerBlockOptin),
         "the kernel may use the device's opt-in shared memory");

  // units are a multiple of the granularity
  reset(kH100);
  launch_peephole_like(kTile);
  expect(r.launched_blocks == (kH + 7) / 8, "granularity 4 keeps 8 units a block");
  reset(cudaDeviceProp{100, 1, 227 * 1024});
  launch_peephole_like(kTile, 512);
  expect(r.launched_blocks == 512 / 8,
         "granularity 4 rounds 6 units a block up to 8, got " +
             std::to_string(r.launched_blocks) + " blocks");

  // cannot run: no cooperative launch, too little shared memory, too few resident blocks
  const cudaDeviceProp no_cooperative{132, 0, 227 * 1024}, small_smem{132, 1, 8 * 1024};
  for (const auto& props : {no_cooperative, small_smem}) {
    reset(props);
    expect(!launch_peephole_like() && r.launches == 0, "a launch that cannot run is not made");
  }
  reset(kH100);
  mock::runtime.blocks_per_sm = [](size_t) { return 0; };
  expect(!launch_peephole_like() && r.launches == 0, "no launch where no block is resident");
  set_recurrence("persistent");
  for (const auto& props : {no_cooperative, small_smem}) {
    reset(props);
    const std::string forced = error_of([] { launch_peephole_like(); });
    expect(forced.find("TLSTM_CUDA_RECURRENCE=persistent, but the persistent kernel cannot run "
                       "this size on this GPU") != std::string::npos && r.launches == 0,
           "forced where it cannot run: a clear error, got \"" + forced + "\"");
  }

  // the driver refuses the grid at run time (another process holds SMs): the steps run
  set_recurrence(nullptr);
  reset(kH100);
  mock::runtime.launch_result = cudaErrorCooperativeLaunchTooLarge;
  const std::string refused = error_of([] {
    expect(!launch_peephole_like(), "a refused launch returns false: the caller runs the steps");
  });
  expect(refused.empty(), "a refused launch is not an error by default, got \"" + refused + "\"");
  expect(r.last_error_calls == 1 && r.pending == cudaSuccess,
         "the refused launch's error is cleared, not left for the next check");
  set_recurrence("persistent");
  reset(kH100);
  mock::runtime.launch_result = cudaErrorCooperativeLaunchTooLarge;
  expect(!error_of([] { launch_peephole_like(); }).empty(),
         "a refused launch is an error when persistent is forced");
  set_recurrence(nullptr);
  reset(kH100);
  mock::runtime.launch_result = cudaErrorInvalidValue;
  expect(!error_of([] { launch_peephole_like(); }).empty(), "any other launch error is raised");

  std::printf("%d of %d checks passed\n", checks - failures, checks);
  return failures == 0 ? 0 : 1;
}
