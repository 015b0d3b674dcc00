// Element-wise math of one peephole LSTM cell (docs/cells.md, section 1), shared by the CPU and the
// CUDA kernels so that both backends compute exactly the same formulas.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "fast_math.h"

namespace tlstm {

enum class Activation { Tanh = 0, Identity = 1 };

// Whether step t of sequence b runs (t < lengths[b]); every step runs without lengths.
C10_HOST_DEVICE inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

struct TanhActivation {
  template <typename T>
  C10_HOST_DEVICE static inline T value(T x) { return tanh_(x); }
  // derivative expressed through the activation's value y = tanh(x)
  template <typename T>
  C10_HOST_DEVICE static inline T derivative_from_value(T y) { return T(1) - y * y; }
};

struct IdentityActivation {
  template <typename T>
  C10_HOST_DEVICE static inline T value(T x) { return x; }
  template <typename T>
  C10_HOST_DEVICE static inline T derivative_from_value(T) { return T(1); }
};

// Post-activation values of one cell element at one step.
template <typename T>
struct PeepholeCellState {
  T i, f, g, o;   // gates after their activations
  T c;            // new cell c_t
  T act_c;        // act(c_t)
  T m;            // o * act(c_t): the hidden value before the optional projection
};

// a_i, a_f, a_g, a_o: pre-activations (input and recurrent terms and biases);
// w_ci, w_cf, w_co: the diagonal peephole weights (zero without peepholes).
template <class Act, typename T>
C10_HOST_DEVICE inline PeepholeCellState<T> peephole_cell_forward(
    T a_i, T a_f, T a_g, T a_o, T c_prev, T w_ci, T w_cf, T w_co) {
  PeepholeCellState<T> s;
  s.i = sigmoid(a_i + w_ci * c_prev);   // input gate peeks at the old cell
  s.f = sigmoid(a_f + w_cf * c_prev);   // forget gate peeks at the old cell
  s.g = Act::value(a_g);
  s.c = s.f * c_prev + s.i * s.g;
  s.o = sigmoid(a_o + w_co * s.c);      // output gate peeks at the new cell
  s.act_c = Act::value(s.c);
  s.m = s.o * s.act_c;
  return s;
}

// Gradients of the pre-activations of one cell element at one step.
template <typename T>
struct PeepholeCellGrad {
  T a_i, a_f, a_g, a_o;  // dL/da for the four gates
  T c_prev;              // dL/dc_{t-1}
};

// grad_m: dL/dm_t (m = o * act(c) before the projection); grad_c: dL/dc_t from step t+1.
template <class Act, typename T>
C10_HOST_DEVICE inline PeepholeCellGrad<T> peephole_cell_backward(
    T i, T f, T g, T o, T c, T c_prev, T w_ci, T w_cf, T w_co, T grad_m, T grad_c) {
  PeepholeCellGrad<T> d;
  const T act_c = Act::value(c);
  d.a_o = grad_m * act_c * o * (T(1) - o);
  const T dc = grad_c + grad_m * o * Act::derivative_from_value(act_c) + d.a_o * w_co;
  d.a_i = dc * g * i * (T(1) - i);
  d.a_f = dc * c_prev * f * (T(1) - f);
  d.a_g = dc * i * Act::derivative_from_value(g);
  d.c_prev = dc * f + d.a_i * w_ci + d.a_f * w_cf;
  return d;
}

}  // namespace tlstm
