// Inputs and outputs of the emulation drivers: uniform random vectors, and buffers written to a
// file as float64 for the comparison scripts.
#pragma once
#include <cstdio>
#include <random>
#include <vector>

template <typename T>
std::vector<T> randv(std::mt19937& g, size_t n, double scale) {
  std::uniform_real_distribution<double> d(-scale, scale);
  std::vector<T> v(n); for (auto& x : v) x = T(d(g)); return v;
}
template <typename T> void dump(FILE* f, const std::vector<T>& v) {
  for (auto x : v) { double d = x; fwrite(&d, 8, 1, f); }
}
