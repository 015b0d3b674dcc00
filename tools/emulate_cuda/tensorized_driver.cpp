// Runs the tensorized LSTM's CUDA kernels (csrc/cuda/tensorized_rows.cuh and
// tensorized_persistent.cuh, as the extension compiles them) on the CPU through
// cuda_host_shim.h, either as the step kernels (the step GEMMs of tensorized_lstm.cpp, one per
// tap that reads a hidden row, in double on the host rounded as cuBLAS rounds its output, around
// the rows and the gather) or as the persistent kernels, on the same random inputs (random, or
// read from the optional inputs file in the order run() asks for them), and writes every output
// buffer as float64 to a file. The host code around them is the driver's (tensorized_lstm.cpp):
// the input rows x_in, their term input_pre, Hcat's slots, and after the backward's loop the
// input rows' gradient. Buffer rows are hidden row first (RowSizes: (p-1)*B + b); h0, c0,
// dL/dH_n and dL/dC_n are read as the op takes them, [B, P, M], and transposed.
// Usage: tensorized_driver stepwise|persistent double|float|half|bfloat16 T B M depth K
//        feedback norm memory_conv lengths(0/1) flush(0/1) training(0/1) units_fwd units_bwd
//        chunk(0: the kernel's own) out [inputs]
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
  bool persistent; int T, B, M, L, K; bool feedback, norm, memory_conv, lengths, flush, training;
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

// [B, P, M] (the op's state layout) to the kernels' [P*B, M] (RowSizes), and back
template <typename T>
std::vector<T> to_rows(const std::vector<T>& v, int64_t B, int64_t P, int64_t M) {
  std::vector<T> r(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      std::copy_n(v.begin() + (b * P + p) * M, M, r.begin() + (p * B + b) * M);
  return r;
}

// The hidden rows [first, first + count) (1-based) whose tap k reads Hcat rows first + d, ...
// (d = k - c) from `lowest` on: tensorized_lstm.cpp's tap_rows (lowest 1: the taps that read
// hidden rows, 0: also the one that reads the input row).
struct TapRows { int64_t k, d, first, count; };
TapRows tap_rows(const RowSizes& n, int64_t k, int64_t lowest) {
  const int64_t d = k - n.c, first = std::max<int64_t>(1, lowest - d);
  const int64_t last = std::min(n.P, n.P - d);
  return {k, d, first, std::max<int64_t>(0, last - first + 1)};
}

// The taps that read hidden rows, tap c first (its product initializes the sums), as the
// driver's recurrent_taps orders them.
std::vector<TapRows> recurrent_taps(const RowSizes& n) {
  std::vector<TapRows> taps;
  for (int64_t i = 0; i < n.taps; ++i) {
    const TapRows t = tap_rows(n, i == 0 ? n.c : (i <= n.c ? i - 1 : i), 1);
    if (t.count > 0) taps.push_back(t);
  }
  return taps;
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
  n.taps = c.feedback ? n.K : n.c + 1; n.G = 4 * n.M + (kMemoryConv ? n.K : 0);
  n.delay = c.flush ? c.L - 1 : 0; n.S = n.T + n.delay;
  n.axes = 1; n.N = n.P; n.Kq = n.K;  // the 2-D cell: its locations are the P rows
  const int64_t rows = n.B * n.P, width = n.taps * n.M, slots = c.training ? n.S : 1;
  const int64_t input_rows = std::min(n.c, n.P);  // c': the hidden rows that read the input row
  const int64_t hcat_slot = (n.P + 1) * n.B * n.M;
  auto proj = in.next<scalar_t>(size_t(n.T) * n.B * n.M, 1.0);
  auto bias_ih = in.next<scalar_t>(n.M, 0.5);
  auto bias_hh = in.next<scalar_t>(n.G, 0.5);
  auto gamma = in.next<scalar_t>(5 * n.M, 1.0);
  auto beta = in.next<scalar_t>(5 * n.M, 0.5);
  auto w_col = in.next<scalar_t>(size_t(width) * n.G, 1.5 / std::sqrt(double(width)));
  const auto h0 = to_rows(in.next<scalar_t>(size_t(rows) * n.M, 1.0), n.B, n.P, n.M);
  const auto c0 = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.P, n.M);
  std::vector<int64_t> lengths(n.B);  // compare_with_cpu_op.py makes the same
  for (int b = 0; b < n.B; ++b) lengths[b] = std::vector<int64_t>{n.T, 1, n.T - 1, 0, 2}[b % 5];
  const int64_t* lengths_ptr = c.lengths ? lengths.data() : nullptr;
  auto weight = [&](int64_t k) { return w_col.data() + k * n.M * n.G; };  // W_k [M, G]

  // The driver's host part: the input rows x_in [S, B, M] (x~_s + b_ih while s < T_b, b_ih
  // after) and their term of A in hidden rows 1..c', input_pre [c', S, B, G] = x_in W_{c-p}.
  std::vector<scalar_t> x_in(size_t(n.S) * n.B * n.M);
  for (int64_t s = 0; s < n.S; ++s)
    for (int64_t b = 0; b < n.B; ++b)
      for (int64_t m = 0; m < n.M; ++m) {
        const int64_t i = (s * n.B + b) * n.M + m;
        x_in[i] = s < sequence_length(lengths_ptr, b, n.T)
                      ? scalar_t(acc_t(proj[i]) + acc_t(bias_ih[m]))
                      : bias_ih[m];
      }
  std::vector<scalar_t> input_pre(std::max<int64_t>(input_rows, 1) * n.S * n.B * n.G);
  for (int64_t p = 1; p <= input_rows; ++p)
    host_gemm<scalar_t>(n.S * n.B, n.G, n.M, x_in.data(), weight(n.c - p), false,
                        input_pre.data() + (p - 1) * n.S * n.B * n.G);

  // forward buffers, filled with -7 where the kernels must write
  std::vector<scalar_t> hcat(size_t(c.training ? n.S + 1 : 2) * hcat_slot, scalar_t(-7)),
      pre(size_t(rows) * n.G, scalar_t(-7)), gates(size_t(slots) * rows * 4 * n.M, scalar_t(-7)),
      q(kMemoryConv ? size_t(slots) * rows * n.K : 1, scalar_t(-7)),
      output(size_t(n.T) * n.B * n.M, scalar_t(-7));
  std::vector<acc_t> cells(size_t(c.training ? n.S + 1 : 2) * rows * n.M, acc_t(-7)),
      norm_hat(kNorm ? size_t(slots) * rows * 5 * n.M : 1, acc_t(-7)),
      norm_rstd(kNorm ? size_t(slots) * rows * 5 : 1, acc_t(-7));
  // Hcat's input rows: x_in of each step when training (slot S has none), else zeros
  for (int64_t slot = 0; slot < (c.training ? n.S + 1 : 2); ++slot)
    for (int64_t i = 0; i < n.B * n.M; ++i)
      hcat[slot * hcat_slot + i] = c.training && slot < n.S ? x_in[slot * n.B * n.M + i]
                                                            : scalar_t(0);
  std::copy(h0.begin(), h0.end(), hcat.begin() + n.B * n.M);  // H_0: rows 1..P of slot 0
  std::copy(c0.begin(), c0.end(), cells.begin());
  std::vector<scalar_t> state_hidden(h0);  // the returned state, h0 and c0 until overwritten
  std::vector<acc_t> state_cell(c0);
  std::vector<scalar_t> zero_gates(n.G, scalar_t(0));
  ForwardSequence<scalar_t, acc_t> fs{input_pre.data(), zero_gates.data(), bias_hh.data(),
      kNorm ? gamma.data() : nullptr, kNorm ? beta.data() : nullptr, hcat.data(), pre.data(),
      cells.data(), gates.data(), kMemoryConv ? q.data() : nullptr,
      kNorm ? norm_hat.data() : nullptr, kNorm ? norm_rstd.data() : nullptr, output.data(),
      state_hidden.data(), state_cell.data(), lengths_ptr, n, c.training};
  const auto taps = recurrent_taps(n);
  if (c.persistent) {
    const int64_t w = c.units_fwd, blocks = (n.G + w - 1) / w;
    std::vector<scalar_t> x_col(size_t(rows) * width, scalar_t(-7));  // the kernel's scratch
    const auto shape = launch_shape<scalar_t, acc_t>("forward", rows, w, width, c.chunk, blocks);
    emu::launch(tensorized_forward_persistent_kernel<scalar_t, acc_t, kNorm, kMemoryConv>,
                int(blocks), kPersistentThreads, shape.bytes,
                TensorizedPersistentForwardParams<scalar_t, acc_t>{fs, x_col.data(), w_col.data(),
                                                                   w, shape});
  } else {
    for (int64_t s = 0; s < n.S; ++s) {
      const scalar_t* hcat_s = fs.hcat_of(s);  // [P+1, B, M]
      for (size_t i = 0; i < taps.size(); ++i) {  // pre (+)= Hcat rows first+d.. W_k
        const TapRows& t = taps[i];
        host_gemm<scalar_t>(t.count * n.B, n.G, n.M, hcat_s + (t.first + t.d) * n.B * n.M,
                            weight(t.k), false, pre.data() + (t.first - 1) * n.B * n.G, i > 0);
      }
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
  const auto ghn = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.P, n.M);
  const auto gcn = to_rows(in.next<acc_t>(size_t(rows) * n.M, 1.0), n.B, n.P, n.M);
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
      for (size_t i = 0; i < taps.size(); ++i) {  // dL/dH_{s-1} (+)= dA W_k^T, by tap
        const TapRows& t = taps[i];
        host_gemm<scalar_t>(t.count * n.B, n.M, n.G, grad_pre_s + (t.first - 1) * n.B * n.G,
                            weight(t.k), true, grad_taps.data() + (t.first + t.d - 1) * n.B * n.M,
                            i > 0);
      }
      emu::launch(tensorized_gather_kernel<scalar_t, acc_t, kMemoryConv>, 2, 64, 0,
                  bs.gather(s, cur));
      cur = 1 - cur;
    }
  }
  // After the loop, as the driver: the input rows' gradient dL/dx_in [S, B, M], from hidden
  // rows 1..c' through their taps c - p (the parameter gradients are GEMMs of the dumped hcat
  // and grad_pre: compare_with_cpu_op.py forms them).
  std::vector<scalar_t> grad_x_in(size_t(n.S) * n.B * n.M, scalar_t(0));
  for (int64_t p = 1; p <= input_rows; ++p)
    for (int64_t s = 0; s < n.S; ++s)
      host_gemm<scalar_t>(n.B, n.M, n.G, grad_pre.data() + (s * rows + (p - 1) * n.B) * n.G,
                          weight(n.c - p), true, grad_x_in.data() + s * n.B * n.M, true);
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
  c.persistent = std::string(argv[1]) == "persistent";
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
