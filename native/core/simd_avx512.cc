// AVX-512 leaf kernels (see simd.h). Compiled with AVX-512 enabled for this file's
// functions only; called only after cpuid says the CPU has AVX-512F.
#include "simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized on its own _mm512_undefined_*.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

namespace specula::simd::avx512 {
namespace {

using V16 = __m512;
constexpr const char* kLevelName = "avx512";

inline void v_prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }
inline V16 v_set(float a) { return _mm512_set1_ps(a); }
inline V16 v_zero() { return _mm512_setzero_ps(); }
inline V16 v_load(const float* p) { return _mm512_loadu_ps(p); }
inline void v_store(float* p, V16 v) { _mm512_storeu_ps(p, v); }
inline __mmask16 tail_mask(size_t n) { return __mmask16((1u << n) - 1u); }
inline V16 v_load_partial(const float* p, size_t n, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p);
}
inline void v_store_partial(float* p, size_t n, V16 v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
inline V16 v_add(V16 a, V16 b) { return _mm512_add_ps(a, b); }
inline V16 v_sub(V16 a, V16 b) { return _mm512_sub_ps(a, b); }
inline V16 v_mul(V16 a, V16 b) { return _mm512_mul_ps(a, b); }
inline V16 v_fmadd(V16 a, V16 b, V16 c) { return _mm512_fmadd_ps(a, b, c); }
inline V16 v_max(V16 a, V16 b) { return _mm512_max_ps(a, b); }
inline V16 v_min(V16 a, V16 b) { return _mm512_min_ps(a, b); }
inline V16 v_round(V16 a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n in one instruction; equal to the exponent-bits add of the other levels for
// normal results (the only ones kept).
inline V16 v_ldexp(V16 p, V16 n) { return _mm512_scalef_ps(p, n); }
// p * 2^n where t >= lo, else 0: the zero-masking is part of the scalef instruction.
inline V16 v_ldexp_zero_below(V16 p, V16 n, V16 t, V16 lo) {
  return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(t, lo, _CMP_GE_OQ), p, n);
}
// NaN or +-Inf in any lane (x - x is NaN exactly then).
inline bool v_any_nonfinite(V16 v) {
  const V16 d = _mm512_sub_ps(v, v);
  return _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q) != 0;
}

#include "simd_impl.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace specula::simd::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
namespace specula::simd::avx512 {
const Kernels* table() { return nullptr; }
}
#endif
