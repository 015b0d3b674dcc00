// Runs the tensorized LSTM's CUDA kernels (csrc/cuda/tensorized_rows.cuh and
// tensorized_persistent.cuh, as the extension compiles them) on the CPU through
// cuda_host_shim.h, either as the step kernels (im2col, a GEMM in double on the host rounded as
// cuBLAS rounds its output, rows, gather) or as the persistent kernels, on the same random
// inputs (random, or read from the optional inputs file in the order run() asks for them), and
// writes every output buffer as float64 to a file.
// Usage: tensorized_driver stepwise|persistent double|float|half|bfloat16 T B M depth K
//        feedback norm memory_conv lengths(0/1) flush(0/1) training(0/1) units_fwd units_bwd
//        chunk(0: the kernel's own) out [inputs]
#include "cuda_host_shim.h"
#include "driver_io.h"
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

// out [rows, N] = a [rows, K] b [K, N] (b_transposed: b is [N, K]), summed in double
template <typename scalar_t>
void host_gemm(int64_t rows, int64_t N, int64_t K, const scalar_t* a, const scalar_t* b,
               bool b_transposed, scalar_t* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += double(a[i * K + k]) * double(b_transposed ? b[j * K + k] : b[k * N + j]);
      out[i * N + j] = scalar_t(s);
    }
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
  const int64_t rows = n.B * n.P, width = n.taps * n.M, slots = c.training ? n.S : 1;
  auto proj = in.next<scalar_t>(size_t(n.T) * n.B * n.M, 1.0);
  auto bias_ih = in.next<scalar_t>(n.M, 0.5);
  auto bias_hh = in.next<scalar_t>(n.G, 0.5);
  auto gamma = in.next<scalar_t>(5 * n.M, 1.0);
  auto beta = in.next<scalar_t>(5 * n.M, 0.5);
  auto w_col = in.next<scalar_t>(size_t(width) * n.G, 1.5 / std::sqrt(double(width)));
  auto h0 = in.next<scalar_t>(size_t(rows) * n.M, 1.0);
  auto c0 = in.next<acc_t>(size_t(rows) * n.M, 1.0);
  std::vector<int64_t> lengths(n.B);  // compare_with_cpu_op.py makes the same
  for (int b = 0; b < n.B; ++b) lengths[b] = std::vector<int64_t>{n.T, 1, n.T - 1, 0, 2}[b % 5];
  // forward buffers, filled with -7 where the kernels must write
  std::vector<scalar_t> x_col(size_t(slots) * rows * width, scalar_t(-7)), pre(size_t(rows) * n.G),
      hidden(2 * size_t(rows) * n.M, scalar_t(-7)), gates(size_t(slots) * rows * 4 * n.M, scalar_t(-7)),
      q(kMemoryConv ? size_t(slots) * rows * n.K : 1, scalar_t(-7)),
      output(size_t(n.T) * n.B * n.M, scalar_t(-7));
  std::vector<acc_t> cells(size_t(c.training ? n.S + 1 : 2) * rows * n.M, acc_t(-7)),
      norm_hat(kNorm ? size_t(slots) * rows * 5 * n.M : 1, acc_t(-7)),
      norm_rstd(kNorm ? size_t(slots) * rows * 5 : 1, acc_t(-7));
  std::copy(h0.begin(), h0.end(), hidden.begin());
  std::copy(c0.begin(), c0.end(), cells.begin());
  std::vector<scalar_t> state_hidden(h0);  // the returned state, h0 and c0 until overwritten
  std::vector<acc_t> state_cell(c0);
  ForwardSequence<scalar_t, acc_t> fs{proj.data(), bias_ih.data(), bias_hh.data(),
      kNorm ? gamma.data() : nullptr, kNorm ? beta.data() : nullptr, x_col.data(), pre.data(),
      hidden.data(), cells.data(), gates.data(), kMemoryConv ? q.data() : nullptr,
      kNorm ? norm_hat.data() : nullptr, kNorm ? norm_rstd.data() : nullptr, output.data(),
      state_hidden.data(), state_cell.data(), c.lengths ? lengths.data() : nullptr, n, c.training};
  if (c.persistent) {
    const int64_t w = c.units_fwd, blocks = (n.G + w - 1) / w;
    const auto shape = launch_shape<scalar_t, acc_t>("forward", rows, w, width, c.chunk, blocks);
    emu::launch(tensorized_forward_persistent_kernel<scalar_t, acc_t, kNorm, kMemoryConv>,
                int(blocks), kPersistentThreads, shape.bytes,
                TensorizedPersistentForwardParams<scalar_t, acc_t>{fs, w_col.data(), w, shape});
  } else {
    for (int64_t s = 0; s < n.S; ++s) {
      emu::launch(tensorized_im2col_kernel<scalar_t>, 2, 64, 0, fs.x_col_of(s),
                  (const scalar_t*)fs.hidden_before(s), (const scalar_t*)proj.data(),
                  (const scalar_t*)bias_ih.data(), (const int64_t*)fs.lengths, n, s);
      host_gemm<scalar_t>(rows, n.G, width, fs.x_col_of(s), w_col.data(), false, pre.data());
      emu::launch(tensorized_forward_rows_kernel<scalar_t, acc_t, kNorm, kMemoryConv>, 2, 64, 0,
                  fs.rows(s));
    }
  }
  dump(out, output); dump(out, state_hidden); dump(out, state_cell); dump(out, hidden);
  dump(out, cells); dump(out, gates);
  if (c.training) dump(out, x_col);  // slot 0 is scratch in inference
  if (kMemoryConv) dump(out, q);
  if (kNorm) { dump(out, norm_hat); dump(out, norm_rstd); }
  if (!c.training) return;

  // backward, from the same saved tensors in both modes: run the step forward's inputs again
  auto grad_output = in.next<scalar_t>(size_t(n.T) * n.B * n.M, 1.0);
  // dL/dH_n, dL/dC_n enter at each sequence's last input step; slot 0 starts at zero
  std::vector<acc_t> grad_hidden(2 * size_t(rows) * n.M, acc_t(-7)), grad_cell(2 * size_t(rows) * n.M, acc_t(-7));
  auto ghn = in.next<acc_t>(size_t(rows) * n.M, 1.0), gcn = in.next<acc_t>(size_t(rows) * n.M, 1.0);
  std::fill_n(grad_hidden.begin(), rows * n.M, acc_t(0));
  std::fill_n(grad_cell.begin(), rows * n.M, acc_t(0));
  std::vector<scalar_t> grad_pre(size_t(n.S) * rows * n.G, scalar_t(-7)), grad_col(size_t(rows) * width, scalar_t(-7)),
      grad_input_row(size_t(n.S) * n.B * n.M, scalar_t(-7));
  std::vector<acc_t> grad_cconv(2 * size_t(rows) * n.M, acc_t(-7)), scratch(size_t(rows) * 3 * n.M, acc_t(-7)),
      grad_norm(kNorm ? size_t(rows) * 10 * n.M : 1, acc_t(0));
  BackwardSequence<scalar_t, acc_t> bs{gates.data(), kMemoryConv ? q.data() : nullptr,
      kNorm ? norm_hat.data() : nullptr, kNorm ? norm_rstd.data() : nullptr,
      kNorm ? gamma.data() : nullptr, kNorm ? beta.data() : nullptr, cells.data(),
      grad_hidden.data(), grad_cell.data(), grad_output.data(), ghn.data(), gcn.data(),
      grad_pre.data(), grad_cconv.data(),
      c.persistent ? rows * n.M : 0, kNorm ? grad_norm.data() : nullptr, scratch.data(),
      grad_col.data(), grad_input_row.data(), c.lengths ? lengths.data() : nullptr, n};
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
      host_gemm<scalar_t>(rows, width, n.G, grad_pre.data() + s * rows * n.G, w_col.data(), true,
                          grad_col.data());
      emu::launch(tensorized_gather_kernel<scalar_t, acc_t, kMemoryConv>, 2, 64, 0,
                  bs.gather(s, cur));
      cur = 1 - cur;
    }
  }
  const size_t last = size_t(n.S % 2) * rows * n.M;
  dump(out, grad_pre); dump(out, grad_col); dump(out, grad_input_row);
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
