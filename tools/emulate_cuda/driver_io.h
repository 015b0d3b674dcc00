// Inputs and outputs of the emulation drivers: uniform random vectors or vectors read from a
// file, and buffers written to a file as float64 for the comparison scripts.
#pragma once
#include <cstdio>
#include <cstdlib>
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

// The drivers' inputs, in the order they ask for them: uniform random vectors, or, given the
// path of a file (float64 values, written by a comparison script), its next n values.
class Inputs {
 public:
  Inputs(unsigned seed, const char* path) : g_(seed) {
    if (path == nullptr) return;
    file_ = fopen(path, "rb");
    if (file_ == nullptr) {
      fprintf(stderr, "cannot read %s\n", path);
      std::exit(2);
    }
  }
  ~Inputs() {
    if (file_ != nullptr) fclose(file_);
  }
  Inputs(const Inputs&) = delete;
  Inputs& operator=(const Inputs&) = delete;

  template <typename T>
  std::vector<T> next(size_t n, double scale) {
    if (file_ == nullptr) return randv<T>(g_, n, scale);
    std::vector<double> d(n);
    if (fread(d.data(), 8, n, file_) != n) {
      fprintf(stderr, "the inputs file ends before %zu more values\n", n);
      std::exit(3);
    }
    return std::vector<T>(d.begin(), d.end());
  }

 private:
  std::mt19937 g_;
  FILE* file_ = nullptr;
};
