// Host emulation of the CUDA features the kernels use: one std::thread per CUDA thread,
// barriers for __syncthreads / grid.sync / __syncwarp / warp shuffles. Validation only.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
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

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const long gen = gen_;
    if (++count_ == n_) { count_ = 0; ++gen_; cv_.notify_all(); return; }
    cv_.wait(lock, [&] { return gen_ != gen; });
  }
 private:
  std::mutex m_; std::condition_variable cv_; int n_; int count_ = 0; long gen_ = 0;
};

namespace emu {
struct Warp { Barrier bar{32}; unsigned char vals[32][8]; };
inline thread_local Dim3 tid, bid;
inline Dim3 bdim, gdim;
inline thread_local unsigned char* shared;
inline thread_local Barrier* block_barrier;
inline thread_local Warp* warp;
inline Barrier* grid_barrier;

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), int blocks, int threads, int64_t smem, Args... args) {
  bdim.x = threads; gdim.x = blocks;
  Barrier grid(blocks * threads); grid_barrier = &grid;
  std::vector<std::vector<unsigned char>> shm(blocks, std::vector<unsigned char>(smem, 0xFF));
  std::vector<std::unique_ptr<Barrier>> bars;
  std::vector<std::unique_ptr<Warp>> warps;
  for (int b = 0; b < blocks; ++b) bars.emplace_back(new Barrier(threads));
  for (int w = 0; w < blocks * threads / 32; ++w) warps.emplace_back(new Warp());
  std::vector<std::thread> ts;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, b, t] {
        tid.x = t; bid.x = b; shared = shm[b].data(); block_barrier = bars[b].get();
        warp = warps[(b * threads + t) / 32].get();
        kernel(args...);
      });
  for (auto& t : ts) t.join();
}
}  // namespace emu

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
