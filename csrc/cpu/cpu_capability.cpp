#include "cpu_capability.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace tlstm {
namespace cpu {

namespace {

Capability detected() {
#ifdef TLSTM_HAVE_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return Capability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability chosen() {
  const Capability cpu = detected();
  const char* env = std::getenv("TLSTM_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return cpu;
  const std::string asked(env);
  Capability want;
  if (asked == "default") {
    want = Capability::kDefault;
  } else if (asked == "avx2") {
    want = Capability::kAvx2;
  } else if (asked == "avx512") {
    want = Capability::kAvx512;
  } else {
    TORCH_CHECK(false, "TLSTM_CPU_CAPABILITY must be one of default, avx2, avx512, got '", asked,
                "'");
  }
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(cpu), "TLSTM_CPU_CAPABILITY=", asked,
              " asks for more than this CPU has (", capability_name(cpu), ")");
  return want;
}

}  // namespace

Capability capability() {
  static const Capability value = chosen();
  return value;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512:
      return "avx512";
    case Capability::kAvx2:
      return "avx2";
    case Capability::kDefault:
      break;
  }
  return "default";
}

int vector_bytes() {
  int bytes = DefaultIsa::kVectorBytes;
  run_for_cpu([&](auto isa) { bytes = decltype(isa)::kVectorBytes; });
  return bytes;
}

}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(tlstm, m) {
  m.def("cpu_capability() -> str", [] { return std::string(cpu::capability_name(cpu::capability())); });
}

}  // namespace tlstm
