// Portable leaf kernels (see simd.h): plain C++ over 16 lanes, for CPUs without
// AVX2+FMA and for other architectures. Same order as the SIMD files, but multiply
// and add are separate operations, so the last bits may differ from them.
#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace specula::simd::portable {
namespace {

struct V16 {
  float v[16];
};
constexpr const char* kLevelName = "portable";

#define SPECULA_LANES(expr) \
  V16 r;                    \
  for (int i = 0; i < 16; ++i) r.v[i] = (expr); \
  return r
inline void v_prefetch(const float* p) { __builtin_prefetch(p); }
inline void v_prefetch_l2(const float* p) { __builtin_prefetch(p, 0, 2); }
inline V16 v_set(float a) { SPECULA_LANES(a); }
inline V16 v_zero() { SPECULA_LANES(0.0f); }
inline V16 v_load(const float* p) { SPECULA_LANES(p[i]); }
inline void v_store(float* p, V16 v) {
  for (int i = 0; i < 16; ++i) p[i] = v.v[i];
}
// Non-temporal store where the level has one; here a plain store.
inline void v_stream(float* p, V16 v) { v_store(p, v); }
inline void v_sfence() {}
inline V16 v_load_partial(const float* p, size_t n, float fill) { SPECULA_LANES(size_t(i) < n ? p[i] : fill); }
inline void v_store_partial(float* p, size_t n, V16 v) {
  for (size_t i = 0; i < n; ++i) p[i] = v.v[i];
}
// 16 bf16 / f16 values widened to f32.
inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = man;
    do {
      ++e;
      m <<= 1;
    } while ((m & 0x400u) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
inline V16 v_load_bf16(const uint16_t* p) { SPECULA_LANES(bf16_to_f32(p[i])); }
inline V16 v_load_f16(const uint16_t* p) { SPECULA_LANES(f16_to_f32(p[i])); }
inline V16 v_add(V16 a, V16 b) { SPECULA_LANES(a.v[i] + b.v[i]); }
inline V16 v_sub(V16 a, V16 b) { SPECULA_LANES(a.v[i] - b.v[i]); }
inline V16 v_mul(V16 a, V16 b) { SPECULA_LANES(a.v[i] * b.v[i]); }
inline V16 v_fmadd(V16 a, V16 b, V16 c) { SPECULA_LANES(a.v[i] * b.v[i] + c.v[i]); }
// Same NaN rule as the x86 instructions: the second operand when either is NaN.
inline V16 v_max(V16 a, V16 b) { SPECULA_LANES(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
inline V16 v_min(V16 a, V16 b) { SPECULA_LANES(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
inline V16 v_round(V16 a) { SPECULA_LANES(__builtin_nearbyintf(a.v[i])); }
inline float ldexp1(float p, float n) {
  uint32_t bits;
  __builtin_memcpy(&bits, &p, 4);
  bits += uint32_t(int32_t(n)) << 23;
  __builtin_memcpy(&p, &bits, 4);
  return p;
}
// n is clamped before the int conversion (out-of-range float-to-int is undefined in C++);
// lanes with n < -126 are zeroed by exp2_16 anyway.
inline V16 v_ldexp(V16 p, V16 n) { SPECULA_LANES(ldexp1(p.v[i], n.v[i] < -127.0f ? -127.0f : n.v[i])); }
inline V16 v_ldexp_zero_below(V16 p, V16 n, V16 t, V16 lo) {
  const V16 y = v_ldexp(p, n);
  SPECULA_LANES(t.v[i] >= lo.v[i] ? y.v[i] : 0.0f);
}
inline bool v_any_nonfinite(V16 v) {
  for (int i = 0; i < 16; ++i)
    if (v.v[i] - v.v[i] != 0.0f) return true;  // NaN for NaN and +-Inf
  return false;
}

// Masks, selection and the rest of the float ops used by the KD kernels.
struct M16 {
  bool b[16];
};
#define SPECULA_MASK(expr) \
  M16 r;                   \
  for (int i = 0; i < 16; ++i) r.b[i] = (expr); \
  return r
inline M16 v_lt(V16 a, V16 b) { SPECULA_MASK(a.v[i] < b.v[i]); }
inline M16 v_or(M16 a, M16 b) { SPECULA_MASK(a.b[i] || b.b[i]); }
inline M16 v_gt(V16 a, V16 b) { SPECULA_MASK(a.v[i] > b.v[i]); }
inline M16 v_eq(V16 a, V16 b) { SPECULA_MASK(a.v[i] == b.v[i]); }
#undef SPECULA_MASK
inline V16 v_select(M16 m, V16 a, V16 b) { SPECULA_LANES(m.b[i] ? a.v[i] : b.v[i]); }
inline V16 v_div(V16 a, V16 b) { SPECULA_LANES(a.v[i] / b.v[i]); }
inline V16 v_abs(V16 a) { SPECULA_LANES(a.v[i] < 0 ? -a.v[i] : a.v[i]); }
// Table lookups: v_index takes lanes that hold integers in [0, 32) exactly; v_lookup32
// returns t[index] per lane from a 32-entry table.
struct VI16 {
  int32_t v[16];
};
inline VI16 v_index(V16 a) {
  VI16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = int32_t(a.v[i]);
  return r;
}
inline V16 v_lookup32(const float* t, VI16 ix) { SPECULA_LANES(t[ix.v[i]]); }
// u = m 2^k with m in [0.75, 1.5), k integral (u positive and normal).
inline void v_log_split(V16 u, V16* m, V16* k) {
  for (int i = 0; i < 16; ++i) {
    int32_t ix;
    __builtin_memcpy(&ix, &u.v[i], 4);
    const int32_t ki = (ix - 0x3f400000) >> 23;
    const int32_t mi = ix - int32_t(uint32_t(ki) << 23);
    __builtin_memcpy(&m->v[i], &mi, 4);
    k->v[i] = float(ki);
  }
}

struct VD16 {
  double v[16];
};
#define SPECULA_DLANES(expr) \
  VD16 r;                    \
  for (int i = 0; i < 16; ++i) r.v[i] = (expr); \
  return r
inline VD16 vd_from(V16 x) { SPECULA_DLANES(double(x.v[i])); }
inline V16 vd_to(VD16 x) { SPECULA_LANES(float(x.v[i])); }
inline VD16 vd_set(double a) { SPECULA_DLANES(a); }
inline VD16 vd_add(VD16 a, VD16 b) { SPECULA_DLANES(a.v[i] + b.v[i]); }
inline VD16 vd_sub(VD16 a, VD16 b) { SPECULA_DLANES(a.v[i] - b.v[i]); }
inline VD16 vd_mul(VD16 a, VD16 b) { SPECULA_DLANES(a.v[i] * b.v[i]); }
inline VD16 vd_fmadd(VD16 a, VD16 b, VD16 c) { SPECULA_DLANES(a.v[i] * b.v[i] + c.v[i]); }
inline VD16 vd_select(M16 m, VD16 a, VD16 b) { SPECULA_DLANES(m.b[i] ? a.v[i] : b.v[i]); }
#undef SPECULA_DLANES
inline VD16 vd_round(VD16 a) {
  VD16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = __builtin_nearbyint(a.v[i]);
  return r;
}
inline VD16 vd_ldexp_zero_below(VD16 p, VD16 n, VD16 x, VD16 lo) {
  VD16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = x.v[i] >= lo.v[i] ? __builtin_ldexp(p.v[i], int(n.v[i])) : 0.0;
  return r;
}
inline bool v_all(M16 m) {
  for (int i = 0; i < 16; ++i)
    if (!m.b[i]) return false;
  return true;
}
inline bool v_any(M16 m) {
  for (int i = 0; i < 16; ++i)
    if (m.b[i]) return true;
  return false;
}
// Bit i = lane i.
inline uint32_t v_bits(M16 m) {
  uint32_t r = 0;
  for (int i = 0; i < 16; ++i) r |= uint32_t(m.b[i]) << i;
  return r;
}
// The lanes of v where m holds, packed to dst[0..count) (dst has room for 16); returns count.
inline size_t v_compress(float* dst, M16 m, V16 v) {
  size_t n = 0;
  for (int i = 0; i < 16; ++i)
    if (m.b[i]) dst[n++] = v.v[i];
  return n;
}
inline M16 v_first(size_t n) {
  M16 r;
  for (int i = 0; i < 16; ++i) r.b[i] = size_t(i) < n;
  return r;
}
inline void vd_store(double* p, VD16 x) {
  for (int i = 0; i < 16; ++i) p[i] = x.v[i];
}
#undef SPECULA_LANES

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

constexpr int kPeakChains = 4;  // k_fma_peak
#define SPECULA_ATTEND_Q 2  // k_attend: query vectors per tile

#include "simd_impl.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace specula::simd::portable
