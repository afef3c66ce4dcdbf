// AVX2 + FMA leaf kernels (see simd.h): 16 lanes as two 8-float registers, with the
// same operation order as the AVX-512 file, so both give bitwise identical results.
#include "simd.h"
#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace specula::simd::avx2 {
namespace {

struct V16 {
  __m256 lo, hi;
};
constexpr const char* kLevelName = "avx2";

inline void v_prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }
inline void v_prefetch_l2(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }
inline V16 v_set(float a) { return V16{_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
inline V16 v_zero() { return V16{_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 v_load(const float* p) { return V16{_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void v_store(float* p, V16 v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
// Non-temporal store to a 64-byte-aligned p (bypasses the caches); v_sfence orders them.
inline void v_stream(float* p, V16 v) {
  _mm256_stream_ps(p, v.lo);
  _mm256_stream_ps(p + 8, v.hi);
}
inline void v_sfence() { _mm_sfence(); }
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
// 16 bf16 / f16 values widened to f32 (bf16: the upper half of a float; f16: F16C).
inline __m256 bf16x8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline V16 v_load_bf16(const uint16_t* p) { return V16{bf16x8(p), bf16x8(p + 8)}; }
inline V16 v_load_f16(const uint16_t* p) {
  return V16{_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
             _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
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


// Masks, selection and the rest of the float ops used by the KD kernels.
struct M16 {
  __m256 lo, hi;  // all-ones lanes where true
};
inline M16 v_lt(V16 a, V16 b) { return M16{_mm256_cmp_ps(a.lo, b.lo, _CMP_LT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_LT_OQ)}; }
inline M16 v_or(M16 a, M16 b) { return M16{_mm256_or_ps(a.lo, b.lo), _mm256_or_ps(a.hi, b.hi)}; }
inline M16 v_gt(V16 a, V16 b) { return M16{_mm256_cmp_ps(a.lo, b.lo, _CMP_GT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_GT_OQ)}; }
inline M16 v_eq(V16 a, V16 b) { return M16{_mm256_cmp_ps(a.lo, b.lo, _CMP_EQ_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_EQ_OQ)}; }
inline V16 v_select(M16 m, V16 a, V16 b) { return V16{_mm256_blendv_ps(b.lo, a.lo, m.lo), _mm256_blendv_ps(b.hi, a.hi, m.hi)}; }
inline V16 v_div(V16 a, V16 b) { return V16{_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
inline V16 v_abs(V16 a) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  return V16{_mm256_and_ps(a.lo, mask), _mm256_and_ps(a.hi, mask)};
}
// Table lookups: v_index takes lanes that hold integers in [0, 32) exactly; v_lookup32
// returns t[index] per lane from a 32-entry table (gathers).
struct VI16 {
  __m256i lo, hi;
};
inline VI16 v_index(V16 a) { return VI16{_mm256_cvttps_epi32(a.lo), _mm256_cvttps_epi32(a.hi)}; }
inline V16 v_lookup32(const float* t, VI16 i) { return V16{_mm256_i32gather_ps(t, i.lo, 4), _mm256_i32gather_ps(t, i.hi, 4)}; }
inline void log_split8(__m256 u, __m256* m, __m256* k) {
  const __m256i ix = _mm256_castps_si256(u);
  const __m256i ki = _mm256_srai_epi32(_mm256_sub_epi32(ix, _mm256_set1_epi32(0x3f400000)), 23);
  *m = _mm256_castsi256_ps(_mm256_sub_epi32(ix, _mm256_slli_epi32(ki, 23)));
  *k = _mm256_cvtepi32_ps(ki);
}
// u = m 2^k with m in [0.75, 1.5), k integral (u positive and normal).
inline void v_log_split(V16 u, V16* m, V16* k) {
  log_split8(u.lo, &m->lo, &k->lo);
  log_split8(u.hi, &m->hi, &k->hi);
}

// 16 doubles as four registers (lanes 0-3, 4-7, 8-11, 12-15).
struct VD16 {
  __m256d d[4];
};
inline VD16 vd_from(V16 v) {
  return VD16{{_mm256_cvtps_pd(_mm256_castps256_ps128(v.lo)), _mm256_cvtps_pd(_mm256_extractf128_ps(v.lo, 1)),
               _mm256_cvtps_pd(_mm256_castps256_ps128(v.hi)), _mm256_cvtps_pd(_mm256_extractf128_ps(v.hi, 1))}};
}
inline V16 vd_to(VD16 x) {
  return V16{_mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(x.d[0])), _mm256_cvtpd_ps(x.d[1]), 1),
             _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(x.d[2])), _mm256_cvtpd_ps(x.d[3]), 1)};
}
#define SPECULA_VD4(expr) VD16{{expr(0), expr(1), expr(2), expr(3)}}
inline VD16 vd_set(double a) { return VD16{{_mm256_set1_pd(a), _mm256_set1_pd(a), _mm256_set1_pd(a), _mm256_set1_pd(a)}}; }
inline VD16 vd_add(VD16 a, VD16 b) {
#define E(i) _mm256_add_pd(a.d[i], b.d[i])
  return SPECULA_VD4(E);
#undef E
}
inline VD16 vd_sub(VD16 a, VD16 b) {
#define E(i) _mm256_sub_pd(a.d[i], b.d[i])
  return SPECULA_VD4(E);
#undef E
}
inline VD16 vd_mul(VD16 a, VD16 b) {
#define E(i) _mm256_mul_pd(a.d[i], b.d[i])
  return SPECULA_VD4(E);
#undef E
}
inline VD16 vd_fmadd(VD16 a, VD16 b, VD16 c) {
#define E(i) _mm256_fmadd_pd(a.d[i], b.d[i], c.d[i])
  return SPECULA_VD4(E);
#undef E
}
inline VD16 vd_select(M16 m, VD16 a, VD16 b) {
  // The float mask's sign bits, widened to doubles, drive blendv.
  const __m256d m0 = _mm256_cvtps_pd(_mm256_castps256_ps128(m.lo)), m1 = _mm256_cvtps_pd(_mm256_extractf128_ps(m.lo, 1));
  const __m256d m2 = _mm256_cvtps_pd(_mm256_castps256_ps128(m.hi)), m3 = _mm256_cvtps_pd(_mm256_extractf128_ps(m.hi, 1));
  return VD16{{_mm256_blendv_pd(b.d[0], a.d[0], m0), _mm256_blendv_pd(b.d[1], a.d[1], m1),
               _mm256_blendv_pd(b.d[2], a.d[2], m2), _mm256_blendv_pd(b.d[3], a.d[3], m3)}};
}
#undef SPECULA_VD4
inline VD16 vd_round(VD16 a) {
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return VD16{{_mm256_round_pd(a.d[0], mode), _mm256_round_pd(a.d[1], mode), _mm256_round_pd(a.d[2], mode),
               _mm256_round_pd(a.d[3], mode)}};
}
inline __m256d ldexp4(__m256d p, __m256d n) {
  // n + 1.5 2^52 holds n in its low bits; shifted into the exponent field and added.
  const __m256i bits = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6755399441055744.0)));
  return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), _mm256_slli_epi64(bits, 52)));
}
// p 2^n where x >= lo, else 0 (results there are normal: exact, as the other levels).
inline VD16 vd_ldexp_zero_below(VD16 p, VD16 n, VD16 x, VD16 lo) {
  VD16 r;
  for (int i = 0; i < 4; ++i) r.d[i] = _mm256_and_pd(ldexp4(p.d[i], n.d[i]), _mm256_cmp_pd(x.d[i], lo.d[i], _CMP_GE_OQ));
  return r;
}
inline bool v_all(M16 m) { return (_mm256_movemask_ps(m.lo) & _mm256_movemask_ps(m.hi)) == 0xff; }
inline bool v_any(M16 m) { return (_mm256_movemask_ps(m.lo) | _mm256_movemask_ps(m.hi)) != 0; }
// Bit i = lane i.
inline uint32_t v_bits(M16 m) { return uint32_t(_mm256_movemask_ps(m.lo)) | uint32_t(_mm256_movemask_ps(m.hi)) << 8; }
// The lanes of v where m holds, packed to dst[0..count) (dst has room for 16); returns count.
inline size_t v_compress(float* dst, M16 m, V16 v) {
  float l[16];
  v_store(l, v);
  size_t n = 0;
  for (uint32_t bits = v_bits(m); bits != 0; bits &= bits - 1) dst[n++] = l[__builtin_ctz(bits)];
  return n;
}
// Lanes [0, n) true.
inline M16 v_first(size_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i nn = _mm256_set1_epi32(int(n));
  return M16{_mm256_castsi256_ps(_mm256_cmpgt_epi32(nn, idx)),
             _mm256_castsi256_ps(_mm256_cmpgt_epi32(nn, _mm256_add_epi32(idx, _mm256_set1_epi32(8))))};
}
inline void vd_store(double* p, VD16 x) {
  for (int i = 0; i < 4; ++i) _mm256_storeu_pd(p + 4 * i, x.d[i]);
}

// tree16 of each of 16 accumulators (simd_model.inc), lane by lane.
inline float tree16_lanes(const float* l) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
inline void v_reduce16(const V16* acc, float* out) {
  float l[16];
  for (int j = 0; j < 16; ++j) {
    v_store(l, acc[j]);
    out[j] = tree16_lanes(l);
  }
}

constexpr int kPeakChains = 6;  // k_fma_peak
#define SPECULA_ATTEND_Q 2  // k_attend: query vectors per tile (16 registers)

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
