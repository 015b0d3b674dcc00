// exp, sigmoid, tanh and sqrt for the cell kernels.
//
// On the host they are branch-free (range reduction and polynomials, 2^n built with integer
// operations only), so that GCC vectorizes the loops of the CPU kernels that call them; this
// needs -fno-trapping-math, which setup.py passes. Accuracy against the correctly rounded
// value: exp within 2 ulp (float) and 3 ulp (double) where the result is normal; past the
// range it saturates to infinity or 0 as std::exp does (so sigmoid is exactly 0 or 1 there, as
// torch's is), and results that would be subnormal come out near the smallest normal. On the
// device they are CUDA's own functions.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tlstm {

namespace detail {

template <typename To, typename From>
inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
  To r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

inline float host_exp(float x) {
  const float arg = x;
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n normal and finite
  x = x > 88.0f ? 88.0f : x;
  // Adding 1.5 * 2^23 rounds x * log2(e) to the integer n, held in the low mantissa bits.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln 2 in two parts
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;  // Cephes expf polynomial on [-ln2/2, ln2/2]
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t scale = (bits_as<int32_t>(t) - bits_as<int32_t>(shifter) + 127) << 23;
  const float e = p * bits_as<float>(scale);
  // past the range, saturate as expf does (sigmoid(-100) is then 0 as in torch, not 6e-39)
  return arg > 88.7228394f ? INFINITY : (arg < -103.972076f ? 0.0f : e);
}

inline double host_exp(double x) {
  const double arg = x;
  x = x < -708.0 ? -708.0 : x;
  x = x > 709.0 ? 709.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634073599 + shifter;
  const double n = t - shifter;
  double r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  // Cephes exp: e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
  const double rr = r * r;
  const double P =
      ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
       9.99999999999999999910e-1) * r;
  const double Q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double p = 1.0 + 2.0 * P / (Q - P);
  const int64_t scale = (bits_as<int64_t>(t) - bits_as<int64_t>(shifter) + 1023) << 52;
  const double e = p * bits_as<double>(scale);
  // past the range, saturate as exp does: sigmoid(-720) is 0 as in torch, not 1.2e-308
  return arg > 709.782712893384 ? INFINITY : (arg < -745.133219101941 ? 0.0 : e);
}

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); below |x| = 0.625, where that loses
// relative accuracy, Cephes' odd rational approximation. Both are computed and one is picked,
// which keeps the loop branch-free.
inline float host_tanh(float x) {
  const float ax = std::fabs(x);
  const float e = host_exp(-2.0f * ax);
  const float large = std::copysign((1.0f - e) / (1.0f + e), x);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  return ax < 0.625f ? small : large;
}

inline double host_tanh(double x) {
  const double ax = std::fabs(x);
  const double e = host_exp(-2.0 * ax);
  const double large = std::copysign((1.0 - e) / (1.0 + e), x);
  const double s = x * x;
  const double P = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s -
                   1.61468768441708447952e3;
  const double Q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s +
                   4.84406305325125486048e3;
  const double small = x + x * s * P / Q;
  return ax < 0.625 ? small : large;
}

#if defined(__CUDACC__)
__device__ inline float device_exp(float x) { return expf(x); }
__device__ inline double device_exp(double x) { return exp(x); }
__device__ inline float device_tanh(float x) { return tanhf(x); }
__device__ inline double device_tanh(double x) { return tanh(x); }
#endif

}  // namespace detail

template <typename T>
C10_HOST_DEVICE inline T exp_(T x) {
#if defined(__CUDA_ARCH__)
  return detail::device_exp(x);
#else
  return detail::host_exp(x);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T tanh_(T x) {
#if defined(__CUDA_ARCH__)
  return detail::device_tanh(x);
#else
  return detail::host_tanh(x);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T sqrt_(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

}  // namespace tlstm
