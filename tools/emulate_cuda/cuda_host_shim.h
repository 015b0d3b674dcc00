// Host emulation of the CUDA features the kernels use: one std::thread per CUDA thread,
// barriers for __syncthreads / grid.sync / __syncwarp / warp shuffles. Validation only.
// Included first, it lets a driver include the device headers of csrc/cuda as they are: it
// defines TLSTM_EMULATED_CUDA and TLSTM_DYNAMIC_SHARED, which csrc/cuda/device_support.cuh
// otherwise takes from CUDA.
//
// By default the threads run concurrently. EMU_SCHEDULE=ascending or descending serializes
// them instead: one CUDA thread runs at a time, from one barrier to the next, and the next to
// run is always the waiting thread of lowest (highest) global index. So between two barriers
// any two threads run in one order in the first schedule and in the other in the second: two
// threads touching the same element with no barrier between them, one of them writing, see
// each other's value in one schedule and not in the other, and the outputs of the two
// schedules differ (race_check.py).
// A barrier that not every thread reaches, which the concurrent emulation would wait on
// forever, ends a serialized run with an error.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <cmath>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __align__(x)

struct Dim3 { unsigned x = 1, y = 1, z = 1; };

class Barrier;
namespace emu {
class Scheduler;
inline Scheduler* scheduler = nullptr;  // set while a serialized launch runs
inline thread_local int thread_index;    // blockIdx.x * blockDim.x + threadIdx.x
}  // namespace emu

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  inline void wait();

 private:
  friend class emu::Scheduler;
  std::mutex m_; std::condition_variable cv_; int n_; int count_ = 0; long gen_ = 0;
  std::vector<int> waiting_;  // the serialized schedules' waiting threads
};

namespace emu {
// One thread at a time: the running thread runs until it waits at a barrier or ends; then the
// runnable thread of lowest (or highest) index runs. A barrier's threads become runnable when
// its last thread arrives.
class Scheduler {
 public:
  Scheduler(int threads, bool descending)
      : descending_(descending), wake_(threads), unfinished_(threads) {
    for (int i = 0; i < threads; ++i) runnable_.insert(i);
    running_ = pick();
  }
  void start() {
    std::unique_lock<std::mutex> lock(m_);
    wake_[thread_index].wait(lock, [&] { return running_ == thread_index; });
  }
  void arrive(::Barrier& barrier) {
    std::unique_lock<std::mutex> lock(m_);
    runnable_.erase(thread_index);
    barrier.waiting_.push_back(thread_index);
    if (int(barrier.waiting_.size()) == barrier.n_) {
      runnable_.insert(barrier.waiting_.begin(), barrier.waiting_.end());
      barrier.waiting_.clear();
    }
    run_next();
    wake_[thread_index].wait(lock, [&] { return running_ == thread_index; });
  }
  void finish() {
    std::unique_lock<std::mutex> lock(m_);
    runnable_.erase(thread_index);
    --unfinished_;
    run_next();
  }

 private:
  int pick() const { return descending_ ? *runnable_.rbegin() : *runnable_.begin(); }
  void run_next() {
    if (runnable_.empty()) {
      if (unfinished_ > 0) {
        std::fprintf(stderr, "emulation: %d threads wait at barriers that not all their threads "
                             "reach\n", unfinished_);
        std::_Exit(4);
      }
      return;
    }
    running_ = pick();
    wake_[running_].notify_one();
  }
  bool descending_;
  std::mutex m_;
  std::vector<std::condition_variable> wake_;
  std::set<int> runnable_;
  int running_ = -1;
  int unfinished_;
};
}  // namespace emu

inline void Barrier::wait() {
  if (emu::scheduler != nullptr) return emu::scheduler->arrive(*this);
  std::unique_lock<std::mutex> lock(m_);
  const long gen = gen_;
  if (++count_ == n_) { count_ = 0; ++gen_; cv_.notify_all(); return; }
  cv_.wait(lock, [&] { return gen_ != gen; });
}

namespace emu {
struct Warp { Barrier bar{32}; unsigned char vals[32][8]; };
inline thread_local Dim3 tid, bid;
inline Dim3 bdim, gdim;
inline thread_local unsigned char* shared;
inline thread_local Barrier* block_barrier;
inline thread_local Warp* warp;
inline Barrier* grid_barrier;

// EMU_SCHEDULE: unset or "concurrent", "ascending" or "descending" (see the top).
inline std::unique_ptr<Scheduler> schedule_from_environment(int threads) {
  const char* value = std::getenv("EMU_SCHEDULE");
  const std::string order = value == nullptr ? "concurrent" : value;
  if (order == "concurrent") return nullptr;
  if (order != "ascending" && order != "descending") {
    std::fprintf(stderr, "EMU_SCHEDULE must be concurrent, ascending or descending, not %s\n",
                 order.c_str());
    std::exit(2);
  }
  return std::make_unique<Scheduler>(threads, order == "descending");
}

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), int blocks, int threads, int64_t smem, Args... args) {
  bdim.x = threads; gdim.x = blocks;
  Barrier grid(blocks * threads); grid_barrier = &grid;
  std::vector<std::vector<unsigned char>> shm(blocks, std::vector<unsigned char>(smem, 0xFF));
  std::vector<std::unique_ptr<Barrier>> bars;
  std::vector<std::unique_ptr<Warp>> warps;
  for (int b = 0; b < blocks; ++b) bars.emplace_back(new Barrier(threads));
  for (int w = 0; w < blocks * threads / 32; ++w) warps.emplace_back(new Warp());
  const auto serialized = schedule_from_environment(blocks * threads);
  scheduler = serialized.get();
  std::vector<std::thread> ts;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, b, t] {
        tid.x = t; bid.x = b; shared = shm[b].data(); block_barrier = bars[b].get();
        thread_index = b * threads + t;
        warp = warps[thread_index / 32].get();
        if (scheduler != nullptr) scheduler->start();
        kernel(args...);
        if (scheduler != nullptr) scheduler->finish();
      });
  for (auto& t : ts) t.join();
  scheduler = nullptr;
}
}  // namespace emu

#define TLSTM_EMULATED_CUDA 1
// a kernel's dynamic shared memory: that of the emulated thread's block
#define TLSTM_DYNAMIC_SHARED(name) unsigned char* name = emu::shared

#define threadIdx emu::tid
#define blockIdx emu::bid
#define blockDim emu::bdim
#define gridDim emu::gdim
inline void __syncthreads() { emu::block_barrier->wait(); }
template <typename T>
T __shfl_down_sync(unsigned, T v, int offset) {
  const int lane = threadIdx.x % 32;
  std::memcpy(emu::warp->vals[lane], &v, sizeof(T));
  emu::warp->bar.wait();
  T r = v;
  if (lane + offset < 32) std::memcpy(&r, emu::warp->vals[lane + offset], sizeof(T));
  emu::warp->bar.wait();
  return r;
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  const int lane = threadIdx.x % 32;
  std::memcpy(emu::warp->vals[lane], &v, sizeof(T));
  emu::warp->bar.wait();
  T r;
  std::memcpy(&r, emu::warp->vals[lane ^ mask], sizeof(T));
  emu::warp->bar.wait();
  return r;
}
inline void __syncwarp() { emu::warp->bar.wait(); }
using std::max;
using std::min;
namespace cooperative_groups {
struct grid_group { void sync() { emu::grid_barrier->wait(); } };
inline grid_group this_grid() { return {}; }
}

// The device math: fast_math.h (exp_, tanh_, sigmoid, sqrt_) compiled as nvcc compiles it for
// the device, with CUDA's expf/exp/tanhf/tanh (here the C library's), not the host branch the
// CPU kernels use, which clamps exp's argument. So an overflow the device would meet (exp of a
// large argument to inf, then inf/inf = NaN) happens here too. fast_math.h is included here,
// once (#pragma once), before any device header; the macros are set around it only.
#if defined(__CUDACC__) || defined(__CUDA_ARCH__)
#error "cuda_host_shim.h is for a host compiler"
#endif
#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#include "fast_math.h"
#undef __CUDA_ARCH__
#undef __CUDACC__
