// Shared helpers of the native benchmarks: timing, medians, fast normal-looking data.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// x[i] = scale * N(0, 1), quickly: a table of normals read at pseudo-random offsets in
// blocks of 4096 (the benchmarks need realistic logits, not independent draws).
inline void fill_normal(float* x, size_t n, float scale, uint64_t seed) {
  static const std::vector<float> table = [] {
    std::mt19937 gen(1);
    std::normal_distribution<float> n01;
    std::vector<float> t(1 << 20);
    for (float& v : t) v = n01(gen);
    return t;
  }();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i += 4096) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const size_t off = size_t(s >> 40) % (table.size() - 4096);
    const size_t len = std::min<size_t>(4096, n - i);
    for (size_t j = 0; j < len; ++j) x[i + j] = scale * table[off + j];
  }
}

}  // namespace bench
