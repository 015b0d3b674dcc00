// tlstm: the one legend of dimension letters used in every shape comment of the project.
//
//   T  time steps of the input sequence
//   B  batch size
//   I  input features
//   H  hidden units of the peephole LSTM (size of the cell state c)
//   R  recurrent width of the peephole LSTM: proj_size when it is > 0, else H
//   M  channels of the tensorized LSTM (its hidden_size)
//   P  rows of the tensorized LSTM's hidden tensor, P = (L-1)*(K-1)/2 + 1
//   N  locations of the tensorized LSTM's hidden tensor: P (2-D cell), or P*P (3-D cell)
//   K  kernel size (taps) of the tensorized LSTM's row convolution, odd
//   L  depth of the tensorized LSTM
//   Kq taps of the tensorized LSTM's memory convolution: K, or K*K (3-D cell)
//   G  gate channels of the tensorized LSTM: 4M+Kq, or 4M without the memory convolution
//   S  slots of a state buffer: T+1 when the whole sequence is kept for the backward, else 2
//
// Shapes are written as comments next to each tensor argument, e.g. `// [T, B, 4H]`.
#pragma once
