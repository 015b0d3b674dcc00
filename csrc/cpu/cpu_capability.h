// The CPU kernels' instruction set, chosen when they run (as ATen's CPU_CAPABILITY dispatch does),
// not when the extension is built: the extension is compiled for the baseline of its target
// (x86-64: SSE2), and each hot loop is compiled once more per vector extension inside a
// function carrying that extension's `target` attribute, which the running CPU's capability
// selects.
//
//   run_for_cpu([&](auto isa) { ... });
//
// runs the lambda's body inlined (`flatten`) into the function of the running CPU's instruction
// set; `isa` says which (isa.kVectorBytes: the width the packed GEMM's vectors take). Only code
// inlined into these functions uses the extension, so the inline functions of other headers that
// the extension's translation units share stay baseline code: the library runs on any x86-64.
//
// TLSTM_CPU_CAPABILITY=default|avx2|avx512 (read once) lowers the choice, for tests and
// comparisons; asking for more than the CPU has is an error.
#pragma once

#include <cstdint>

namespace tlstm {
namespace cpu {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The capability the kernels use: the running CPU's, or TLSTM_CPU_CAPABILITY's when lower.
Capability capability();
const char* capability_name(Capability c);

struct DefaultIsa {
  static constexpr Capability kCapability = Capability::kDefault;
  static constexpr int kVectorBytes = 16;  // SSE2 (x86-64's baseline), NEON
};
struct Avx2Isa {
  static constexpr Capability kCapability = Capability::kAvx2;
  static constexpr int kVectorBytes = 32;
};
struct Avx512Isa {
  static constexpr Capability kCapability = Capability::kAvx512;
  static constexpr int kVectorBytes = 64;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TLSTM_HAVE_X86_VARIANTS 1
template <class Fn>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"), flatten)) inline void
run_avx512(const Fn& fn) {
  fn(Avx512Isa{});
}
template <class Fn>
__attribute__((target("avx2,fma"), flatten)) inline void run_avx2(const Fn& fn) {
  fn(Avx2Isa{});
}
#endif

template <class Fn>
#if defined(__GNUC__) || defined(__clang__)
__attribute__((flatten))
#endif
inline void run_default(const Fn& fn) {
  fn(DefaultIsa{});
}

// fn(isa), compiled for and run with the running CPU's instruction set.
template <class Fn>
void run_for_cpu(const Fn& fn) {
#ifdef TLSTM_HAVE_X86_VARIANTS
  switch (capability()) {
    case Capability::kAvx512:
      return run_avx512(fn);
    case Capability::kAvx2:
      return run_avx2(fn);
    case Capability::kDefault:
      break;
  }
#endif
  run_default(fn);
}

// The vector width of the running CPU's packed GEMM (packed_gemm.h), in bytes.
int vector_bytes();

}  // namespace cpu
}  // namespace tlstm
