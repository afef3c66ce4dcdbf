// AVX-512 leaf kernels (see simd.h). Compiled with AVX-512 enabled for this file's
// functions only; called only after cpuid says the CPU has AVX-512F.
#include "simd.h"
#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized on its own _mm512_undefined_*.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#endif

namespace specula::simd::avx512 {
namespace {

using V16 = __m512;
constexpr const char* kLevelName = "avx512";

inline void v_prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }
inline void v_prefetch_l2(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }
inline V16 v_set(float a) { return _mm512_set1_ps(a); }
inline V16 v_zero() { return _mm512_setzero_ps(); }
inline V16 v_load(const float* p) { return _mm512_loadu_ps(p); }
inline void v_store(float* p, V16 v) { _mm512_storeu_ps(p, v); }
// Non-temporal store to a 64-byte-aligned p (bypasses the caches); v_sfence orders them.
inline void v_stream(float* p, V16 v) { _mm512_stream_ps(p, v); }
inline void v_sfence() { _mm_sfence(); }
inline __mmask16 tail_mask(size_t n) { return __mmask16((1u << n) - 1u); }
inline V16 v_load_partial(const float* p, size_t n, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p);
}
inline void v_store_partial(float* p, size_t n, V16 v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
// 16 bf16 / f16 values widened to f32 (bf16: the upper half of a float; f16: F16C).
inline V16 v_load_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline V16 v_load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
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


// Masks, selection and the rest of the float ops used by the KD kernels.
using M16 = __mmask16;
inline M16 v_lt(V16 a, V16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline M16 v_or(M16 a, M16 b) { return M16(a | b); }
inline M16 v_gt(V16 a, V16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline M16 v_eq(V16 a, V16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
inline V16 v_select(M16 m, V16 a, V16 b) { return _mm512_mask_blend_ps(m, b, a); }
inline V16 v_div(V16 a, V16 b) { return _mm512_div_ps(a, b); }
inline V16 v_abs(V16 a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff))); }
// Table lookups: v_index takes lanes that hold integers in [0, 32) exactly; v_lookup32
// returns t[index] per lane from a 32-entry table (one two-register permute).
using VI16 = __m512i;
inline VI16 v_index(V16 a) { return _mm512_cvttps_epi32(a); }
inline V16 v_lookup32(const float* t, VI16 i) { return _mm512_permutex2var_ps(_mm512_loadu_ps(t), i, _mm512_loadu_ps(t + 16)); }
// u = m 2^k with m in [0.75, 1.5), k integral (u positive and normal).
inline void v_log_split(V16 u, V16* m, V16* k) {
  const __m512i ix = _mm512_castps_si512(u);
  const __m512i ki = _mm512_srai_epi32(_mm512_sub_epi32(ix, _mm512_set1_epi32(0x3f400000)), 23);
  *m = _mm512_castsi512_ps(_mm512_sub_epi32(ix, _mm512_slli_epi32(ki, 23)));
  *k = _mm512_cvtepi32_ps(ki);
}

// 16 doubles (lanes 0-7, 8-15), for the sums and differences that float cannot hold.
struct VD16 {
  __m512d lo, hi;
};
inline VD16 vd_from(V16 v) {
  return VD16{_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
              _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))};
}
inline V16 vd_to(VD16 d) {
  const __m256 lo = _mm512_cvtpd_ps(d.lo), hi = _mm512_cvtpd_ps(d.hi);
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
inline VD16 vd_set(double a) { return VD16{_mm512_set1_pd(a), _mm512_set1_pd(a)}; }
inline VD16 vd_add(VD16 a, VD16 b) { return VD16{_mm512_add_pd(a.lo, b.lo), _mm512_add_pd(a.hi, b.hi)}; }
inline VD16 vd_sub(VD16 a, VD16 b) { return VD16{_mm512_sub_pd(a.lo, b.lo), _mm512_sub_pd(a.hi, b.hi)}; }
inline VD16 vd_mul(VD16 a, VD16 b) { return VD16{_mm512_mul_pd(a.lo, b.lo), _mm512_mul_pd(a.hi, b.hi)}; }
inline VD16 vd_fmadd(VD16 a, VD16 b, VD16 c) { return VD16{_mm512_fmadd_pd(a.lo, b.lo, c.lo), _mm512_fmadd_pd(a.hi, b.hi, c.hi)}; }
inline VD16 vd_select(M16 m, VD16 a, VD16 b) {
  return VD16{_mm512_mask_blend_pd(__mmask8(m & 0xff), b.lo, a.lo), _mm512_mask_blend_pd(__mmask8(m >> 8), b.hi, a.hi)};
}
inline VD16 vd_round(VD16 a) {
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return VD16{_mm512_roundscale_pd(a.lo, mode), _mm512_roundscale_pd(a.hi, mode)};
}
// p 2^n where x >= lo, else 0 (results there are normal: exact, as the other levels).
inline VD16 vd_ldexp_zero_below(VD16 p, VD16 n, VD16 x, VD16 lo) {
  return VD16{_mm512_maskz_scalef_pd(_mm512_cmp_pd_mask(x.lo, lo.lo, _CMP_GE_OQ), p.lo, n.lo),
              _mm512_maskz_scalef_pd(_mm512_cmp_pd_mask(x.hi, lo.hi, _CMP_GE_OQ), p.hi, n.hi)};
}
inline bool v_all(M16 m) { return m == 0xffff; }
inline bool v_any(M16 m) { return m != 0; }
// Bit i = lane i.
inline uint32_t v_bits(M16 m) { return m; }
// The lanes of v where m holds, packed to dst[0..count) (dst has room for 16); returns count.
inline size_t v_compress(float* dst, M16 m, V16 v) {
  _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(m, v));
  return size_t(__builtin_popcount(m));
}
// Lanes [0, n) true.
inline M16 v_first(size_t n) { return __mmask16((1u << n) - 1u); }
inline void vd_store(double* p, VD16 d) {
  _mm512_storeu_pd(p, d.lo);
  _mm512_storeu_pd(p + 8, d.hi);
}

// tree16 of 16 accumulators at once (simd_model.inc): the same pairings, transposed.
// Step 1 adds 256-bit halves (lanes i, i + 8) of pairs of accumulators, step 2 the
// 128-bit quarters (i, i + 4), steps 3 and 4 the elements (i, i + 2) and (i, i + 1)
// within quarters. Lane 4c + p of the result holds accumulator c + 4p.
inline void v_reduce16(const V16* a, float* out) {
  V16 r[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x88), _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44), _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
  const V16 s = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
  // out[c + 4p] = s[4c + p]
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, s));
}

constexpr int kPeakChains = 12;  // k_fma_peak
#define SPECULA_ATTEND_Q 6  // k_attend: query vectors per tile (6 x 4 accumulators + 4 loads fit the 32 registers)

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
