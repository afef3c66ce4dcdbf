// Leaf kernels over float spans, in one implementation per instruction set, picked at
// run time (cpuid), so that one binary runs on any x86-64 CPU and uses AVX-512 or AVX2
// where the CPU has them. Everything else in core is plain C++ that calls these.
//
// Arithmetic contract: every reduction uses 16 lanes (element j goes to lane j % 16),
// lanes are added in order 0..15 in double at the end, and exp uses one fixed
// polynomial with fused multiply-adds. The AVX-512 and AVX2 tables therefore return
// bitwise identical results. The portable table (CPUs without AVX2+FMA) uses the same
// order without fused multiply-adds, so its last bits may differ.
#pragma once

#include <cstddef>

namespace specula::simd {

// Inputs with exp arguments below this give exactly 0 (the result would be subnormal).
constexpr float kExpMin = -87.0f;

struct Kernels {
  const char* name;  // "avx512", "avx2" or "portable"
  // max(x[0..n)), n >= 1. Sets *bad = true if any element is NaN or +-Inf (else leaves it).
  float (*max)(const float* x, size_t n, bool* bad);
  // out[j] = exp((x[j] - m) * s); returns the sum of out (16-lane order).
  float (*exp_sum)(const float* x, size_t n, float m, float s, float* out);
  // sum_j min(a p[j], b q[j]) -> *min_sum, sum_j max(0, a p[j] - b q[j]) -> *resid_sum.
  void (*min_resid)(const float* p, const float* q, size_t n, float a, float b, float* min_sum,
                    float* resid_sum);
  // sum_j x[j] (16-lane order).
  float (*sum)(const float* x, size_t n);
  // x[j] *= a.
  void (*scale)(float* x, size_t n, float a);
  // Reads x once and returns a value that depends on every element (bandwidth baseline).
  double (*read)(const float* x, size_t n);
};

// The table chosen for this CPU; SPECULA_SIMD=avx512|avx2|portable in the environment
// asks for a lower level (a level the CPU lacks is never chosen).
const Kernels& kernels();
// The table of a level if this CPU supports it, else nullptr. Levels: "avx512", "avx2", "portable".
const Kernels* kernels_for(const char* level);
// Chooses the table used by kernels() from now on; false if the CPU lacks the level.
bool set_level(const char* level);

}  // namespace specula::simd
