// Numbers and shapes as text for error messages and CUDA-graph keys, without std::ostream.
//
// Why: on the GPU machines' image (g++ 13, torch 2.11+cu130) this extension's own instantiation
// of std::ostream's number insertion (ostream::_M_insert<long>/<double>, reached through
// `stream << n` and through TORCH_CHECK(..., n) / c10::str) ended up inside the extension's .so
// and crashed with a segfault in the locale's number formatting, while strings, dtypes and
// devices printed fine. std::to_string and snprintf go through the C library instead. Rule for
// csrc/: never pass a number or an IntArrayRef to a stream, TORCH_CHECK or c10::str; wrap it in
// num() / shape_str() (tests/test_cuda_sources.py checks the built module for the symbols).
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

namespace dawm_fast {

template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline std::string num(T v) {
  return std::to_string(v);
}

inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// Exact text of a double ("%a"): two keys are equal only when the values are bit-identical.
inline std::string hexfloat(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%a", v);
  return buf;
}

// "[2, 8, 6]"
inline std::string shape_str(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) {
      s += ", ";
    }
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

}  // namespace dawm_fast
