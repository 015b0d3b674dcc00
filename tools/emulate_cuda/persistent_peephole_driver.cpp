// Runs the persistent peephole kernels (csrc/cuda/peephole_persistent.cuh, as the extension
// compiles it) on the CPU through cuda_host_shim.h, on random inputs or those of the optional
// inputs file (in the order run() asks for them), and writes every output buffer as float64 to
// a file.
// Built with -DREFERENCE_KERNEL for the kernels of 46d7fc7 instead
// (fixtures/peephole_persistent_46d7fc7.cuh; their parameters had no shape).
// Usage: driver double|float|half|bfloat16 T B H units lengths(0/1) reverse(0/1) whole_history(0/1) chunk out [inputs]
#include "cuda_host_shim.h"
#include "driver_io.h"
#include <cstdio>
#include <cstdlib>
#include <random>
#ifdef REFERENCE_KERNEL
#include "fixtures/peephole_persistent_46d7fc7.cuh"
#else
#include "cuda/peephole_persistent.cuh"
#endif
using namespace tlstm;


template <typename scalar_t>
void run(int T, int B, int H, int w, bool use_lengths, bool reverse, bool whole, int chunk,
         Inputs& in, FILE* out) {
  using acc_t = at::opmath_type<scalar_t>;
  auto gates_in = in.next<scalar_t>(size_t(T) * B * 4 * H, 1.0);  // x W_ih^T
  auto bias = in.next<scalar_t>(4 * H, 0.5);
  auto peep = in.next<scalar_t>(3 * H, 0.5);
  auto W = in.next<scalar_t>(size_t(4) * H * H, 1.0 / std::sqrt(H));
  std::vector<scalar_t> Wt(size_t(H) * 4 * H);
  for (int r = 0; r < 4 * H; ++r) for (int k = 0; k < H; ++k) Wt[size_t(k) * 4 * H + r] = W[size_t(r) * H + k];
  const int S = whole ? T + 1 : 2;
  auto h0 = in.next<scalar_t>(size_t(B) * H, 1.0);
  auto c0 = in.next<acc_t>(size_t(B) * H, 1.0);
  std::vector<scalar_t> hs(size_t(S) * B * H, scalar_t(-7));
  std::vector<acc_t> cs(size_t(S) * B * H, acc_t(-7));
  const int first = whole && reverse ? T : 0;
  std::copy(h0.begin(), h0.end(), hs.begin() + size_t(first) * B * H);
  std::copy(c0.begin(), c0.end(), cs.begin() + size_t(first) * B * H);
  std::vector<scalar_t> output(size_t(T) * B * H, scalar_t(-7));
  std::vector<int64_t> lengths(B);  // compare_with_cpu_op.py makes the same
  for (int b = 0; b < B; ++b) lengths[b] = std::vector<int64_t>{T, 2, T - 1, 0, 1, T, 3}[b % 7];
  const int64_t* len = use_lengths ? lengths.data() : nullptr;
  std::vector<scalar_t> gates = gates_in;
  const int blocks = (H + w - 1) / w;
#ifndef REFERENCE_KERNEL
  auto shape_f = block_matmul_shape<scalar_t, acc_t>(B, 4 * w, H, 0);
  auto fix = [&](BlockMatmulShape s, int64_t extra) {
    if (chunk > 0) {
      s.chunk = chunk;
      place_block_matmul<scalar_t, acc_t>(s, extra);
    }
    fprintf(stderr, "shape K=%ld rows_x=%ld rows_w=%ld tiles=%ld slices=%ld items=%ld chunk=%ld bytes=%ld\n",
            (long)s.K, (long)s.rows_x, (long)s.rows_w, (long)s.tiles, (long)s.slices, (long)s.items, (long)s.chunk, (long)s.bytes);
    return s;
  };
  shape_f = fix(shape_f, 0);
  PersistentForwardParams<scalar_t, acc_t> pf{gates.data(), bias.data(), peep.data(), Wt.data(), hs.data(), cs.data(), output.data(), len, T, B, H, w, reverse, whole, shape_f};
  emu::launch(peephole_forward_persistent_kernel<scalar_t, acc_t, TanhActivation>, blocks, kPersistentThreads, shape_f.bytes, pf);
#else
  PersistentForwardParams<scalar_t, acc_t> pf{gates.data(), bias.data(), peep.data(), Wt.data(), hs.data(), cs.data(), output.data(), len, T, B, H, w, reverse, whole};
  emu::launch(peephole_forward_persistent_kernel<scalar_t, acc_t, TanhActivation>, blocks, kPersistentThreads, forward_shared_bytes<scalar_t, acc_t>(B, H, w), pf);
#endif
  dump(out, gates); dump(out, hs); dump(out, cs); dump(out, output);
  if (!whole) return;
  auto grad_output = in.next<scalar_t>(size_t(T) * B * H, 1.0);
  auto grad_hn = in.next<scalar_t>(size_t(B) * H, 1.0);
  auto grad_cell = in.next<acc_t>(size_t(B) * H, 1.0);
  std::vector<scalar_t> grad_h0(size_t(B) * H, scalar_t(-7));
  std::vector<scalar_t> grad_gates(size_t(T) * B * 4 * H, scalar_t(-7));
  std::vector<acc_t> gp(size_t(B) * 3 * H, acc_t(0));
#ifndef REFERENCE_KERNEL
  auto shape_b = fix(block_matmul_shape<scalar_t, acc_t>(B, w, 4 * H, B * w * int64_t(sizeof(acc_t))), B * w * int64_t(sizeof(acc_t)));
  PersistentBackwardParams<scalar_t, acc_t> pb{gates.data(), cs.data(), grad_output.data(), W.data(), peep.data(), grad_hn.data(), grad_h0.data(), grad_cell.data(), grad_gates.data(), gp.data(), len, T, B, H, w, reverse, shape_b};
  emu::launch(peephole_backward_persistent_kernel<scalar_t, acc_t, TanhActivation, true>, blocks, kPersistentThreads, shape_b.bytes, pb);
#else
  PersistentBackwardParams<scalar_t, acc_t> pb{gates.data(), cs.data(), grad_output.data(), W.data(), peep.data(), grad_hn.data(), grad_h0.data(), grad_cell.data(), grad_gates.data(), gp.data(), len, T, B, H, w, reverse};
  emu::launch(peephole_backward_persistent_kernel<scalar_t, acc_t, TanhActivation, true>, blocks, kPersistentThreads, backward_shared_bytes<scalar_t, acc_t>(B, H, w), pb);
#endif
  dump(out, grad_gates); dump(out, grad_h0); dump(out, grad_cell); dump(out, gp);
}

int main(int argc, char** argv) {
  // dtype T B H w lengths reverse whole chunk outfile
  const std::string dtype = argv[1];
  int T = atoi(argv[2]), B = atoi(argv[3]), H = atoi(argv[4]), w = atoi(argv[5]);
  bool len = atoi(argv[6]), rev = atoi(argv[7]), whole = atoi(argv[8]);
  int chunk = atoi(argv[9]);
  FILE* f = fopen(argv[10], "wb");
  Inputs in(1234, argc > 11 ? argv[11] : nullptr);
  if (dtype == "double") run<double>(T, B, H, w, len, rev, whole, chunk, in, f);
  else if (dtype == "float") run<float>(T, B, H, w, len, rev, whole, chunk, in, f);
  else if (dtype == "half") run<c10::Half>(T, B, H, w, len, rev, whole, chunk, in, f);
  else run<c10::BFloat16>(T, B, H, w, len, rev, whole, chunk, in, f);
  fclose(f);
}
