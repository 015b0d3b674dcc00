// Schemas of the tlstm ops. Each device registers its kernels with TORCH_LIBRARY_IMPL in its own
// file (cpu/, cuda/); the autograd formulas and the shape (fake) functions are registered from
// Python in tlstm/ops.py. Shapes use the legend in dimensions.h.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing tlstm._C loads this library, whose static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(tlstm, m) {
  // One layer, one direction of the peephole LSTM over a whole sequence.
  //   input [T, B, I], h0 [B, R], c0 [B, H], weight_ih [4H, I], weight_hh [4H, R],
  //   bias_ih, bias_hh [4H], weight_peephole [3, H] (w_ci, w_cf, w_co), weight_proj [R, H],
  //   lengths [B] int64 (step t of sequence b runs iff t < lengths[b]).
  // Returns output [T, B, R], h_n [B, R], c_n [B, H] and, when training, the saved
  // post-activation gates [T, B, 4H], hidden_states [T+1, B, R] and cell_states [T+1, B, H]
  // (op-math dtype) in time order; empty tensors otherwise.
  m.def(
      "peephole_lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_peephole, "
      "Tensor? weight_proj, Tensor? lengths, bool reverse, str activation, bool training) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor hidden_states, "
      "Tensor cell_states)");
  // Gradients of peephole_lstm_forward. grad_input is empty unless need_grad_input;
  // grad_bias [4H] is the gradient of each bias vector; grad_weight_peephole and
  // grad_weight_proj are empty when the forward had none.
  m.def(
      "peephole_lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? weight_peephole, "
      "Tensor? weight_proj, Tensor? lengths, Tensor gates, Tensor hidden_states, "
      "Tensor cell_states, bool reverse, str activation, bool need_grad_input) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias, Tensor grad_weight_peephole, "
      "Tensor grad_weight_proj)");

  // The tensorized LSTM over a whole sequence (docs/cells.md; csrc/tensorized_lstm.h):
  //   input [T, B, I], h0, c0 [B, P, M], weight_ih [M, I], bias_ih [M], weight_hh [G, M, K'],
  //   bias_hh [G], norm_weight, norm_bias [5, M] (channel norm iff given), lengths [B] int64.
  // Runs T + depth - 1 steps with flush, else T. Returns output [T, B, M] (the top row
  // h_{t+delay, P}, zero past each length), h_n, c_n [B, P, M] and, when training, what the
  // backward needs: hcat [S+1, P+1, B, M] (the input row and H_{s-1} of each step), gates
  // [S, P, B, 4M], q [S, P, B, K], norm_hat [S, P, B, 5, M], norm_rstd [S, P, B, 5], cells
  // [S+1, P, B, M] (empty tensors otherwise; rows in the kernels' order, hidden row first).
  m.def(
      "tensorized_lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, "
      "Tensor? bias_ih, Tensor weight_hh, Tensor? bias_hh, Tensor? norm_weight, "
      "Tensor? norm_bias, Tensor? lengths, int depth, int kernel_size, bool feedback, "
      "bool memory_conv, bool flush, bool training) -> (Tensor output, Tensor h_n, "
      "Tensor c_n, Tensor hcat, Tensor gates, Tensor q, Tensor norm_hat, Tensor norm_rstd, "
      "Tensor cells)");
  // Gradients of tensorized_lstm_forward; grad_input is empty unless need_grad_input, the
  // norm gradients are empty without channel norm.
  m.def(
      "tensorized_lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? norm_weight, "
      "Tensor? norm_bias, Tensor? lengths, Tensor hcat, Tensor gates, Tensor q, "
      "Tensor norm_hat, Tensor norm_rstd, Tensor cells, int depth, int kernel_size, "
      "bool feedback, bool memory_conv, bool flush, bool need_grad_input) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, "
      "Tensor grad_bias_ih, Tensor grad_weight_hh, Tensor grad_bias_hh, "
      "Tensor grad_norm_weight, Tensor grad_norm_bias)");
}
