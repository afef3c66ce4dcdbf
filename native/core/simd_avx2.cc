// AVX2 + FMA leaf kernels (see simd.h): 16 lanes as two 8-float registers, with the
// same operation order as the AVX-512 file, so both give bitwise identical results.
#include "simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace specula::simd::avx2 {
namespace {

struct V16 {
  __m256 lo, hi;
};
constexpr const char* kLevelName = "avx2";

inline void v_prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }
inline V16 v_set(float a) { return V16{_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
inline V16 v_zero() { return V16{_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 v_load(const float* p) { return V16{_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void v_store(float* p, V16 v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
inline V16 v_load_partial(const float* p, size_t n, float fill) {
  float t[16];
  for (size_t i = 0; i < 16; ++i) t[i] = i < n ? p[i] : fill;
  return v_load(t);
}
inline void v_store_partial(float* p, size_t n, V16 v) {
  float t[16];
  v_store(t, v);
  for (size_t i = 0; i < n; ++i) p[i] = t[i];
}
inline V16 v_add(V16 a, V16 b) { return V16{_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline V16 v_sub(V16 a, V16 b) { return V16{_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
inline V16 v_mul(V16 a, V16 b) { return V16{_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline V16 v_fmadd(V16 a, V16 b, V16 c) {
  return V16{_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline V16 v_max(V16 a, V16 b) { return V16{_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
inline V16 v_min(V16 a, V16 b) { return V16{_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
inline V16 v_round(V16 a) {
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return V16{_mm256_round_ps(a.lo, mode), _mm256_round_ps(a.hi, mode)};
}
inline __m256 ldexp8(__m256 p, __m256 n) {
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}
// Exact for normal results; lanes with n < -126 give garbage, which exp2_16 zeroes.
inline V16 v_ldexp(V16 p, V16 n) { return V16{ldexp8(p.lo, n.lo), ldexp8(p.hi, n.hi)}; }
// p * 2^n where t >= lo, else 0.
inline V16 v_ldexp_zero_below(V16 p, V16 n, V16 t, V16 lo) {
  const V16 y = v_ldexp(p, n);
  return V16{_mm256_and_ps(y.lo, _mm256_cmp_ps(t.lo, lo.lo, _CMP_GE_OQ)),
             _mm256_and_ps(y.hi, _mm256_cmp_ps(t.hi, lo.hi, _CMP_GE_OQ))};
}
// NaN or +-Inf in any lane (x - x is NaN exactly then).
inline bool v_any_nonfinite(V16 v) {
  const __m256 a = _mm256_sub_ps(v.lo, v.lo), b = _mm256_sub_ps(v.hi, v.hi);
  return (_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)) |
          _mm256_movemask_ps(_mm256_cmp_ps(b, b, _CMP_UNORD_Q))) != 0;
}

#include "simd_impl.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace specula::simd::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
namespace specula::simd::avx2 {
const Kernels* table() { return nullptr; }
}
#endif
