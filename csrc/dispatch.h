// Run-time flags as template arguments: fn gets std::true_type{} or std::false_type{} for each
// flag, so that kernels are instantiated per flag combination instead of branching per element.
#pragma once

#include <type_traits>

namespace tlstm {

template <class Fn>
void dispatch_flag(bool flag, const Fn& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

template <class Fn>
void dispatch_flags(bool a, bool b, const Fn& fn) {
  dispatch_flag(a, [&](auto x) { dispatch_flag(b, [&](auto y) { fn(x, y); }); });
}

}  // namespace tlstm
