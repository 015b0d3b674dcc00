// Runs the tensorized LSTM's CUDA kernels (csrc/cuda/tensorized_rows.cuh and
// tensorized_persistent.cuh, as the extension compiles them) on the CPU through
// cuda_host_shim.h, either as the step kernels (the step GEMMs of tensorized_lstm.cpp, one per
// run of locations that a tap reads, in double on the host rounded as cuBLAS rounds its output,
// around the rows and the gather) or as the persistent kernels, on the same random inputs
// (random, or read from the optional inputs file in the order run() asks for them), and writes
// every output buffer as float64 to a file. The host code around them is the driver's
// (tensorized_lstm.cpp): the input rows x_in, their term input_pre, Hcat's slots, and after the
// backward's loop the input rows' gradient.
// Modes: stepwise and persistent run the 2-D cell (its locations are the P rows); plane runs the
// step kernels on the 3-D cell (the P x P plane, N = P*P locations, K*K memory taps: the CUDA
// backend runs that cell with the step kernels only). Buffer rows are location first (RowSizes:
// (l-1)*B + b); h0, c0, dL/dH_n and dL/dC_n are read as the op takes them, [B, P, M] or
// [B, P, P, M], and transposed to [N, B, M].
// Usage: tensorized_driver stepwise|persistent|plane double|float|half|bfloat16 T B M depth K
//        feedback norm memory_conv lengths(0/1) flush(0/1) training(0/1) units_fwd units_bwd
//        chunk(0: the kernel's own; the last three unused by the step kernels) out [inputs]
#include "cuda_host_shim.h"
#include "driver_io.h"
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include "cuda/tensorized_persistent.cuh"
#include "cuda/tensorized_rows.cuh"
using namespace tlstm;


struct Config {
  bool persistent, plane; int T, B, M, L, K;
  bool feedback, norm, memory_conv, lengths, flush, training;
  int units_fwd, units_bwd, chunk;
};

// out [rows, N] = a [rows, K] b [K, N] (b_transposed: b is [N, K]), summed in double and
// rounded once; with `accumulate`, out = round(sum + out) (cuBLAS's beta = 1)
template <typename scalar_t>
void host_gemm(int64_t rows, int64_t N, int64_t K, const scalar_t* a, const scalar_t* b,
               bool b_transposed, scalar_t* out, bool accumulate = false) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += double(a[i * K + k]) * double(b_transposed ? b[j * K + k] : b[k * N + j]);
      out[i * N + j] = scalar_t(accumulate ? s + double(out[i * N + j]) : s);
    }
}

// [B, N, M] (the op's state layout, [B, P, M] or [B, P, P, M] flattened) to the kernels'
// [N*B, M] (RowSizes), and back
template <typename T>
std::vector<T> to_rows(const std::vector<T>& v, int64_t B, int64_t N, int64_t M) {
  std::vector<T> r(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < N; ++l)
      std::copy_n(v.begin() + (b * N + l) * M, M, r.begin() + (l * B + b) * M);
  return r;
}

// The weight taps: K' on rows, K' x K' on the plane (tap (k1, k2) at k1 * K' + k2).
int64_t tap_count(const RowSizes& n) { return n.axes == 1 ? n.taps : n.taps * n.taps; }

// What tap k of location l (1..N) reads in Hcat: its coordinates moved by the tap's offset,
// (k - c) on rows, (k1 - c, k2 - c) on the plane. Returns the hidden location read (1..N), 0
// where it reads the input (row 0, or the plane's corner (0, 0)), -1 where it reads the zero
// padding (the rest of row 0 and column 0, or past P).
int64_t tap_source(const RowSizes& n, int64_t k, int64_t l) {
  if (n.axes == 1) {
    const int64_t r = l + k - n.c;
    return r < 0 || r > n.P ? -1 : r;
  }
  const int64_t q1 = (l - 1) / n.P + 1 + k / n.taps - n.c;
  const int64_t q2 = (l - 1) % n.P + 1 + k % n.taps - n.c;
  if (q1 == 0 && q2 == 0) return 0;
  if (q1 < 1 || q2 < 1 || q1 > n.P || q2 > n.P) return -1;
  return (q1 - 1) * n.P + q2;
}

// A run of locations of one tap: locations dst .. dst + count - 1 (1-based) read the hidden
// locations src .. src + count - 1. Found by walking the locations and joining neighbours, so
// one run on rows and, on the plane, one per plane row, or one in all where the tap keeps the
// column (each location's sum is the same however the rows are cut into GEMMs).
struct TapRun { int64_t dst, src, count; };
struct Tap { int64_t k; std::vector<TapRun> runs; };
Tap tap_runs(const RowSizes& n, int64_t k) {
  Tap t{k, {}};
  for (int64_t l = 1; l <= n.N; ++l) {
    const int64_t src = tap_source(n, k, l);
    if (src < 1) continue;
    if (!t.runs.empty() && t.runs.back().dst + t.runs.back().count == l &&
        t.runs.back().src + t.runs.back().count == src) {
      ++t.runs.back().count;
    } else {
      t.runs.push_back({l, src, 1});
    }
  }
  return t;
}

// The taps that read hidden locations, the centre tap (offset 0: every location) first, its
// product initializing the sums, as the driver's recurrent_taps orders them.
std::vector<Tap> recurrent_taps(const RowSizes& n) {
  const int64_t centre = n.axes == 1 ? n.c : n.c * n.taps + n.c;
  std::vector<Tap> taps{tap_runs(n, centre)};
  for (int64_t k = 0; k < tap_count(n); ++k) {
    if (k == centre) continue;
    Tap t = tap_runs(n, k);
    if (!t.runs.empty()) taps.push_back(std::move(t));
  }
  return taps;
}

// The locations that read the input, with the tap that reads it and input_pre's slot of the
// location: rows 1..c' (slot p - 1), or the c' x c' corner (slot (p1 - 1) * c' + p2 - 1),
// c' = min(c, P).
struct InputRead { int64_t slot, l, k; };
std::vector<InputRead> input_reads(const RowSizes& n) {
  const int64_t corner = std::min(n.c, n.P);
  std::vector<InputRead> reads;
  for (int64_t l = 1; l <= n.N; ++l)
    for (int64_t k = 0; k < tap_count(n); ++k) {
      if (tap_source(n, k, l) != 0) continue;
      const int64_t p1 = n.axes == 1 ? l : (l - 1) / n.P + 1, p2 = (l - 1) % n.P + 1;
      reads.push_back({n.axes == 1 ? p1 - 1 : (p1 - 1) * corner + p2 - 1, l, k});
    }
  if (int64_t(reads.size()) != (n.axes == 1 ? corner : corner * corner)) {
    fprintf(stderr, "%zu locations read the input, not c'^axes\n", reads.size());
    std::exit(5);
  }
  return reads;
}

// The shape of a persistent launch of `blocks` blocks with w rows of the resident operand each,
// with the staged chunk `chunk` if it is not 0; reported on stderr.
template <typename scalar_t, typename acc_t>
BlockMatmulShape launch_shape(const char* what, int64_t rows, int64_t w, int64_t reduction,
                              int chunk, int64_t blocks) {
  auto s = block_matmul_shape<scalar_t, acc_t>(rows, w, reduction, 0);
  if (chunk > 0) {
    s.chunk = chunk;
    place_block_matmul<scalar_t, acc_t>(s, 0);
  }
  fprintf(stderr, "%s: %ld blocks, chunk %ld, slices %ld, %ld bytes\n", what, (long)blocks,
          (long)s.chunk, (long)s.slices, (long)s.bytes);
  return s;
}

template <typename scalar_t, bool kNorm, bool kMemoryConv>
void run(const Config& c, Inputs& in, FILE* out) {
  using acc_t = at::opmath_type<scalar_t>;
  RowSizes n;
  n.T = c.T; n.B = c.B; n.M = c.M; n.K = c.K; n.c = (c.K - 1) / 2; n.P = (c.L - 1) * n.c + 1;
  n.taps = c.feedback ? n.K : n.c + 1;
  n.delay = c.flush ? c.L - 1 : 0; n.S = n.T + n.delay;
  // the 2-D cell's locations are the P rows; the 3-D cell's the P x P plane, row by row
  n.axes = c.plane ? 2 : 1; n.N = c.plane ? n.P * n.P : n.P; n.Kq = c.plane ? n.K * n.K : n.K;
  n.G = 4 * n.M + (kMemoryConv ? n.Kq : 0);
  const int64_t rows = n.B * n.N, slots = c.training ? n.S : 1;
  const int64_t width = n.taps * n.M;  // the persistent kernels' X_col row (rows only)
  const int64_t hcat_slot = (n.N + 1) * n.B * n.M;
  auto proj = in.next<scalar_t>(size_t(n.T) * n.B * n.M, 1.0);
  auto bias_ih = in.next<scalar_t>(n.M, 0.5);
  auto bias_hh = in.next<scalar_t>(n.G, 0.5);
  auto gamma = in.next<scalar_t>(5 * n.M, 1.0);
  auto beta = in.next<scalar_t>(5 * n.M, 0.5);
  // W_col [taps*M, G]: W_col[k*M + m, o] = weight_hh[o, m, k] (k = k1*K' + k2 on the plane)
  const int64_t fan_in = tap_count(n) * n.M;
  auto w_col = in.next<scalar_t>(size_t(fan_in) * n.G, 1.5 / std::sqrt(double(fan_in)));
  const auto h0 = to_rows(in.next<scalar_t>(size_t(rows) * n.M, 1.0), n.B, n.N, n.M);
  const auto c0 = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.N, n.M);
  std::vector<int64_t> lengths(n.B);  // compare_with_cpu_op.py makes the same
  for (int b = 0; b < n.B; ++b) lengths[b] = std::vector<int64_t>{n.T, 1, n.T - 1, 0, 2}[b % 5];
  const int64_t* lengths_ptr = c.lengths ? lengths.data() : nullptr;
  auto weight = [&](int64_t k) { return w_col.data() + k * n.M * n.G; };  // W_k [M, G]

  // The driver's host part: the input rows x_in [S, B, M] (x~_s + b_ih while s < T_b, b_ih
  // after) and their term of A at the locations that read them, by slot: input_pre
  // [c'^axes, S, B, G] = x_in W_k, k the location's tap that reads the input (c - p on rows,
  // (c - p1)*K' + c - p2 on the plane).
  std::vector<scalar_t> x_in(size_t(n.S) * n.B * n.M);
  for (int64_t s = 0; s < n.S; ++s)
    for (int64_t b = 0; b < n.B; ++b)
      for (int64_t m = 0; m < n.M; ++m) {
        const int64_t i = (s * n.B + b) * n.M + m;
        x_in[i] = s < sequence_length(lengths_ptr, b, n.T)
                      ? scalar_t(acc_t(proj[i]) + acc_t(bias_ih[m]))
                      : bias_ih[m];
      }
  const auto reads = input_reads(n);
  std::vector<scalar_t> input_pre(reads.size() * n.S * n.B * n.G, scalar_t(-7));
  for (const InputRead& r : reads)
    host_gemm<scalar_t>(n.S * n.B, n.G, n.M, x_in.data(), weight(r.k), false,
                        input_pre.data() + r.slot * n.S * n.B * n.G);

  // forward buffers, filled with -7 where the kernels must write
  std::vector<scalar_t> hcat(size_t(c.training ? n.S + 1 : 2) * hcat_slot, scalar_t(-7)),
      pre(size_t(rows) * n.G, scalar_t(-7)), gates(size_t(slots) * rows * 4 * n.M, scalar_t(-7)),
      q(kMemoryConv ? size_t(slots) * rows * n.Kq : 1, scalar_t(-7)),
      output(size_t(n.T) * n.B * n.M, scalar_t(-7));
  std::vector<acc_t> cells(size_t(c.training ? n.S + 1 : 2) * rows * n.M, acc_t(-7)),
      norm_hat(kNorm ? size_t(slots) * rows * 5 * n.M : 1, acc_t(-7)),
      norm_rstd(kNorm ? size_t(slots) * rows * 5 : 1, acc_t(-7));
  // Hcat's input rows (location 0): x_in of each step when training (slot S has none), else
  // zeros
  for (int64_t slot = 0; slot < (c.training ? n.S + 1 : 2); ++slot)
    for (int64_t i = 0; i < n.B * n.M; ++i)
      hcat[slot * hcat_slot + i] = c.training && slot < n.S ? x_in[slot * n.B * n.M + i]
                                                            : scalar_t(0);
  std::copy(h0.begin(), h0.end(), hcat.begin() + n.B * n.M);  // H_0: locations 1..N of slot 0
  std::copy(c0.begin(), c0.end(), cells.begin());
  std::vector<scalar_t> state_hidden(h0);  // the returned state, h0 and c0 until overwritten
  std::vector<acc_t> state_cell(c0);
  std::vector<scalar_t> zero_gates(n.G, scalar_t(0));
  ForwardSequence<scalar_t, acc_t> fs{input_pre.data(), zero_gates.data(), bias_hh.data(),
      kNorm ? gamma.data() : nullptr, kNorm ? beta.data() : nullptr, hcat.data(), pre.data(),
      cells.data(), gates.data(), kMemoryConv ? q.data() : nullptr,
      kNorm ? norm_hat.data() : nullptr, kNorm ? norm_rstd.data() : nullptr, output.data(),
      state_hidden.data(), state_cell.data(), lengths_ptr, n, c.training, 0, n.S};
  const auto taps = recurrent_taps(n);
  if (c.persistent) {  // (rows only: the plane mode runs the steps)
    const int64_t w = c.units_fwd, blocks = (n.G + w - 1) / w;
    std::vector<scalar_t> x_col(size_t(rows) * width, scalar_t(-7));  // the kernel's scratch
    const auto shape = launch_shape<scalar_t, acc_t>("forward", rows, w, width, c.chunk, blocks);
    emu::launch(tensorized_forward_persistent_kernel<scalar_t, acc_t, kNorm, kMemoryConv>,
                int(blocks), kPersistentThreads, shape.bytes,
                TensorizedPersistentForwardParams<scalar_t, acc_t>{fs, x_col.data(), w_col.data(),
                                                                   w, shape});
  } else {
    for (int64_t s = 0; s < n.S; ++s) {
      const scalar_t* hcat_s = fs.hcat_of(s);  // [N+1, B, M]
      for (size_t i = 0; i < taps.size(); ++i)  // pre[dst..] (+)= Hcat[src..] W_k, by run
        for (const TapRun& r : taps[i].runs)
          host_gemm<scalar_t>(r.count * n.B, n.G, n.M, hcat_s + r.src * n.B * n.M,
                              weight(taps[i].k), false, pre.data() + (r.dst - 1) * n.B * n.G,
                              i > 0);
      emu::launch(tensorized_forward_rows_kernel<scalar_t, acc_t, kNorm, kMemoryConv>, 2, 64, 0,
                  fs.rows(s));
    }
  }
  dump(out, output); dump(out, state_hidden); dump(out, state_cell); dump(out, hcat);
  dump(out, cells); dump(out, gates);
  if (kMemoryConv) dump(out, q);
  if (kNorm) { dump(out, norm_hat); dump(out, norm_rstd); }
  if (!c.training) return;

  // backward, from the same saved tensors in both modes: run the step forward's inputs again
  auto grad_output = in.next<scalar_t>(size_t(n.T) * n.B * n.M, 1.0);
  // dL/dH_n, dL/dC_n enter at each sequence's last input step; slot 0 starts at zero
  std::vector<acc_t> grad_hidden(2 * size_t(rows) * n.M, acc_t(-7)), grad_cell(2 * size_t(rows) * n.M, acc_t(-7));
  const auto ghn = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.N, n.M);
  const auto gcn = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.N, n.M);
  std::fill_n(grad_hidden.begin(), rows * n.M, acc_t(0));
  std::fill_n(grad_cell.begin(), rows * n.M, acc_t(0));
  // the step kernels' dL/dH_{s-1} through the taps, the persistent kernel's dX_col (scratch)
  std::vector<scalar_t> grad_pre(size_t(n.S) * rows * n.G, scalar_t(-7)),
      grad_taps(size_t(rows) * n.M, scalar_t(-7)), grad_col(size_t(rows) * width, scalar_t(-7));
  std::vector<acc_t> grad_cconv(2 * size_t(rows) * n.M, acc_t(-7)), scratch(size_t(rows) * 3 * n.M, acc_t(-7)),
      grad_norm(kNorm ? size_t(rows) * 10 * n.M : 1, acc_t(0));
  BackwardSequence<scalar_t, acc_t> bs{gates.data(), kMemoryConv ? q.data() : nullptr,
      kNorm ? norm_hat.data() : nullptr, kNorm ? norm_rstd.data() : nullptr,
      kNorm ? gamma.data() : nullptr, kNorm ? beta.data() : nullptr, cells.data(),
      grad_hidden.data(), grad_cell.data(), grad_output.data(), ghn.data(), gcn.data(),
      grad_pre.data(), grad_cconv.data(),
      c.persistent ? rows * n.M : 0, kNorm ? grad_norm.data() : nullptr, scratch.data(),
      c.persistent ? nullptr : grad_taps.data(), c.persistent ? grad_col.data() : nullptr,
      lengths_ptr, n};
  if (c.persistent) {
    const int64_t w = c.units_bwd, blocks = (width + w - 1) / w;
    const auto shape = launch_shape<scalar_t, acc_t>("backward", rows, w, n.G, c.chunk, blocks);
    emu::launch(tensorized_backward_persistent_kernel<scalar_t, acc_t, kNorm, kMemoryConv>,
                int(blocks), kPersistentThreads, shape.bytes,
                TensorizedPersistentBackwardParams<scalar_t, acc_t>{bs, w_col.data(), w, shape});
  } else {
    int64_t cur = 0;
    for (int64_t s = n.S - 1; s >= 0; --s) {
      emu::launch(tensorized_backward_rows_kernel<scalar_t, acc_t, kNorm, kMemoryConv>, 2, 64, 0,
                  bs.rows(s, cur));
      const scalar_t* grad_pre_s = grad_pre.data() + s * rows * n.G;
      for (size_t i = 0; i < taps.size(); ++i)  // dL/dH_{s-1}[src..] (+)= dA[dst..] W_k^T
        for (const TapRun& r : taps[i].runs)
          host_gemm<scalar_t>(r.count * n.B, n.M, n.G, grad_pre_s + (r.dst - 1) * n.B * n.G,
                              weight(taps[i].k), true,
                              grad_taps.data() + (r.src - 1) * n.B * n.M, i > 0);
      emu::launch(tensorized_gather_kernel<scalar_t, acc_t, kMemoryConv>, 2, 64, 0,
                  bs.gather(s, cur));
      cur = 1 - cur;
    }
  }
  // After the loop, as the driver: the input rows' gradient dL/dx_in [S, B, M], from the
  // locations that read them through their taps (the parameter gradients are GEMMs of the
  // dumped hcat and grad_pre: compare_with_cpu_op.py forms them).
  std::vector<scalar_t> grad_x_in(size_t(n.S) * n.B * n.M, scalar_t(0));
  for (const InputRead& r : reads)
    for (int64_t s = 0; s < n.S; ++s)
      host_gemm<scalar_t>(n.B, n.M, n.G, grad_pre.data() + (s * rows + (r.l - 1) * n.B) * n.G,
                          weight(r.k), true, grad_x_in.data() + s * n.B * n.M, true);
  const size_t last = size_t(n.S % 2) * rows * n.M;
  dump(out, grad_pre); dump(out, grad_x_in);
  dump(out, std::vector<acc_t>(grad_hidden.begin() + last, grad_hidden.begin() + last + rows * n.M));
  dump(out, std::vector<acc_t>(grad_cell.begin() + last, grad_cell.begin() + last + rows * n.M));
  if (kNorm) dump(out, grad_norm);
}

template <typename scalar_t>
void run_flags(const Config& c, Inputs& in, FILE* out) {
  if (c.norm && c.memory_conv) run<scalar_t, true, true>(c, in, out);
  else if (c.norm) run<scalar_t, true, false>(c, in, out);
  else if (c.memory_conv) run<scalar_t, false, true>(c, in, out);
  else run<scalar_t, false, false>(c, in, out);
}

int main(int argc, char** argv) {
  if (argc != 18 && argc != 19) {
    fprintf(stderr, "expected 17 or 18 arguments, got %d\n", argc - 1);
    return 2;
  }
  Config c;
  const std::string mode = argv[1];
  if (mode != "stepwise" && mode != "persistent" && mode != "plane") {
    fprintf(stderr, "the mode is stepwise, persistent or plane (the 3-D cell's step kernels), "
                    "not %s\n", mode.c_str());
    return 2;
  }
  c.persistent = mode == "persistent";
  c.plane = mode == "plane";
  const std::string dtype = argv[2];
  int* ints[] = {&c.T, &c.B, &c.M, &c.L, &c.K};
  for (int i = 0; i < 5; ++i) *ints[i] = atoi(argv[3 + i]);
  bool* flags[] = {&c.feedback, &c.norm, &c.memory_conv, &c.lengths, &c.flush, &c.training};
  for (int i = 0; i < 6; ++i) *flags[i] = atoi(argv[8 + i]) != 0;
  c.units_fwd = atoi(argv[14]); c.units_bwd = atoi(argv[15]); c.chunk = atoi(argv[16]);
  FILE* f = fopen(argv[17], "wb");
  Inputs in(4321, argc == 19 ? argv[18] : nullptr);
  if (dtype == "double") run_flags<double>(c, in, f);
  else if (dtype == "float") run_flags<float>(c, in, f);
  else if (dtype == "half") run_flags<c10::Half>(c, in, f);
  else run_flags<c10::BFloat16>(c, in, f);
  fclose(f);
}
