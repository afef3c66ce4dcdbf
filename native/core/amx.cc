// bf16 matrix products on AMX (amx.h). Compiled with AMX and AVX-512 enabled for this
// file's functions only; they run only after cpuid and the OS say the CPU has them.
#include "amx.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12))
#define SPECULA_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define SPECULA_HAVE_AMX 0
#endif

namespace specula::amx {
namespace {

bool detect() {
#if SPECULA_HAVE_AMX
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx512f = (b >> 16) & 1, amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  if (!avx512f || !amx_bf16 || !amx_tile) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 0x60000u) != 0x60000u) return false;  // XTILECFG and XTILEDATA enabled by the OS
  // Linux hands out the tile data state on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
  // for every thread of the process.
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

// SPECULA_AMX: "0" off, "3" three pieces, anything else (or unset) two.
const char* amx_env() {
  const char* e = std::getenv("SPECULA_AMX");
  return e != nullptr ? e : "";
}

std::atomic<bool>& switch_on() {
  static std::atomic<bool> on{std::strcmp(amx_env(), "0") != 0};
  return on;
}

std::atomic<int>& piece_count() {
  static std::atomic<int> p{std::strcmp(amx_env(), "3") == 0 ? 3 : 2};
  return p;
}

constexpr size_t kTileElems = 512;  // bf16 in one B tile: 16 rows (k pairs) x 16 columns x 2

size_t col_blocks(size_t rows, size_t P) { return (P * rows + 15) / 16; }

}  // namespace

bool available() {
  static const bool a = detect();
  return a;
}

bool enabled() { return available() && switch_on().load(std::memory_order_relaxed); }

bool set_enabled(bool on) {
  const bool was = enabled();
  switch_on().store(on);
  return was;
}

int pieces() { return piece_count().load(std::memory_order_relaxed); }

int set_pieces(int p) {
  const int was = pieces();
  if (p == 2 || p == 3) piece_count().store(p);
  return was;
}

bool usable(const simd::MatmulArgs& a) { return a.wtype == simd::WType::BF16 && a.k % 32 == 0 && a.k > 0 && enabled(); }

size_t packed_size(size_t rows, size_t k) { return (k / 32) * col_blocks(rows, size_t(pieces())) * kTileElems; }

#if SPECULA_HAVE_AMX

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized on its own _mm512_undefined_*.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,amx-tile,amx-bf16")
#endif

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0..5: accumulators (16 weight rows x 16 columns, f32); 6: weights (16 rows x 32
// bf16); 7: activations (16 k pairs x 16 columns). Loaded once per thread.
void configure() {
  thread_local bool done = false;
  if (done) return;
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
  done = true;
}

// y[m, r] = (hi + lo) or ((hi + mid) + lo), + bias, then + y (the FMA kernels' order
// around the sum), for rows m in [m0, m1) and the nr weight rows from r0, whose P pieces
// stand at s[r * lds + P (m - m0) ..].
void epilogue(const simd::MatmulArgs& a, size_t P, const float* s, size_t lds, size_t m0, size_t m1, size_t r0,
              size_t nr) {
  for (size_t m = m0; m < m1; ++m) {
    float* y = a.y + m * a.ldy + r0;
    for (size_t r = 0; r < nr; ++r) {
      const float* sm = s + r * lds + P * (m - m0);
      float v = sm[0] + sm[1];
      if (P == 3) v += sm[2];
      if (a.bias != nullptr) v += a.bias[r0 + r];
      y[r] = a.accumulate ? y[r] + v : v;
    }
  }
}

// Transposes 16 x 16 floats in place: v[c] becomes column c (lane i = row i).
inline void transpose16(__m512 v[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: rows 4i..4i+3 of column 4L + j.
  __m512 u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 e1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), e2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 o1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD), o2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    v[j] = _mm512_shuffle_f32x4(e1, e2, 0x88);
    v[8 + j] = _mm512_shuffle_f32x4(e1, e2, 0xDD);
    v[4 + j] = _mm512_shuffle_f32x4(o1, o2, 0x88);
    v[12 + j] = _mm512_shuffle_f32x4(o1, o2, 0xDD);
  }
}

// epilogue() vectorized over the weight rows, for many rows m: 16 P columns at a time
// (the pieces of 16 rows m) of the 16 weight rows transposed, so that each row m's
// pieces are vectors over the weight rows; the same operations in the same order, so the
// same bits. Reads up to 16 P - 1 floats past column P (m1 - m0) of each row of s.
template <size_t P>
void epilogue16(const simd::MatmulArgs& a, const float* s, size_t lds, size_t m0, size_t m1, size_t r0, size_t nr) {
  const __mmask16 k = __mmask16((1u << nr) - 1);
  const __m512 bias = a.bias != nullptr ? _mm512_maskz_loadu_ps(k, a.bias + r0) : _mm512_setzero_ps();
  for (size_t mb = m0; mb < m1; mb += 16) {
    __m512 c[16 * P];  // c[i]: column i of the 16 P, over the weight rows
    for (size_t q = 0; q < P; ++q) {
      for (size_t r = 0; r < 16; ++r) c[16 * q + r] = _mm512_loadu_ps(s + r * lds + P * (mb - m0) + 16 * q);
      transpose16(c + 16 * q);
    }
    const size_t mn = std::min<size_t>(16, m1 - mb);
    for (size_t j = 0; j < mn; ++j) {
      __m512 v = _mm512_add_ps(c[P * j], c[P * j + 1]);
      if (P == 3) v = _mm512_add_ps(v, c[P * j + 2]);
      if (a.bias != nullptr) v = _mm512_add_ps(v, bias);
      float* y = a.y + (mb + j) * a.ldy + r0;
      if (a.accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, y), v);
      _mm512_mask_storeu_ps(y, k, v);
    }
  }
}

// The bf16 piece (the top 16 bits) of x (bits b): rounded to nearest, ties to even, for
// two pieces; truncated for three (x = hi + mid + lo exactly: 8 + 8 + 8 significant bits),
// and wherever b is infinite or NaN or would round to infinity, so that x - piece stays
// finite for finite x. x - piece is exact in f32 either way.
template <size_t P>
inline __m512i piece(__m512i b) {
  const __m512i top = _mm512_set1_epi32(int(0xFFFF0000u));
  const __m512i trunc = _mm512_and_si512(b, top);
  if (P == 3) return trunc;
  const __m512i exp = _mm512_set1_epi32(0x7F800000);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_and_si512(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), top);
  const __mmask16 special =
      _mm512_cmpeq_epi32_mask(_mm512_and_si512(b, exp), exp) | _mm512_cmpeq_epi32_mask(_mm512_and_si512(r, exp), exp);
  return _mm512_mask_mov_epi32(r, special, trunc);
}

template <size_t P>
void pack_pieces(const float* x, size_t ldx, size_t rows, size_t k, uint16_t* out, size_t kb0, size_t kb1) {
  const size_t kb = std::min(k / 32, kb1), cb = col_blocks(rows, P);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  // A B tile is 16 k pairs (rows) x 16 columns of bf16 pairs: the 16 columns' vectors over
  // the k pairs, transposed in registers, are its 16 rows, written as 64-byte stores
  // instead of a 16-way scatter per column (40 x 768: 10.1 us against 10.5; packing was
  // 3.7% of a 1 x 9 forward's samples with the scatters). Columns past P * rows are zero.
  for (size_t b = kb0; b < kb; ++b) {
    for (size_t blk = 0; blk < cb; ++blk) {
      __m512 col[16];
      const size_t m_first = blk * 16 / P, m_end = std::min(rows, ((blk + 1) * 16 + P - 1) / P);
      for (size_t i = 0; i < 16; ++i) col[i] = _mm512_setzero_ps();
      for (size_t m = m_first; m < m_end; ++m) {
        const float* xr = x + m * ldx + b * 32;
        const __m512i lo16 = _mm512_castps_si512(_mm512_loadu_ps(xr));
        const __m512i hi16 = _mm512_castps_si512(_mm512_loadu_ps(xr + 16));
        // The k pairs: e = x[2i], o = x[2i + 1], i = 0..15.
        __m512 e = _mm512_castsi512_ps(_mm512_permutex2var_epi32(lo16, even, hi16));
        __m512 o = _mm512_castsi512_ps(_mm512_permutex2var_epi32(lo16, odd, hi16));
        for (size_t p = 0; p < P; ++p) {
          // This piece; the rest goes on to the next.
          const __m512i eb = piece<P>(_mm512_castps_si512(e));
          const __m512i ob = piece<P>(_mm512_castps_si512(o));
          const size_t c = P * m + p;
          if (c / 16 == blk)  // with three pieces a row's pieces may straddle two blocks
            col[c % 16] = _mm512_castsi512_ps(_mm512_or_si512(ob, _mm512_srli_epi32(eb, 16)));  // (even low, odd high)
          e = _mm512_sub_ps(e, _mm512_castsi512_ps(eb));
          o = _mm512_sub_ps(o, _mm512_castsi512_ps(ob));
        }
      }
      transpose16(col);
      float* dst = reinterpret_cast<float*>(out + (b * cb + blk) * kTileElems);
      for (size_t i = 0; i < 16; ++i) _mm512_storeu_ps(dst + 16 * i, col[i]);
    }
  }
}

}  // namespace

void pack(const float* x, size_t ldx, size_t rows, size_t k, uint16_t* out, size_t kb0, size_t kb1) {
  if (pieces() == 3) pack_pieces<3>(x, ldx, rows, k, out, kb0, kb1);
  else pack_pieces<2>(x, ldx, rows, k, out, kb0, kb1);
}

void matmul(const simd::MatmulArgs& a, const uint16_t* packed, size_t n0, size_t n1, size_t n) {
  if (n0 >= n1 || a.rows == 0) return;
  configure();
  const size_t P = size_t(pieces()), K = a.k, kb = K / 32, M = a.rows, cb = col_blocks(M, P);
  // Groups of up to 6 column blocks (the accumulator tiles): 96 columns, the pieces of 48
  // rows (two pieces) or 32 (three), so that every group holds whole rows. Groups go
  // outside the weight rows: the block's weights (n1 - n0 <= 128 rows) and a group's
  // activations stay in L2 while the other groups reuse them.
  constexpr size_t kGroup = 6;
  const size_t group_rows = kGroup * 16 / P;
  thread_local std::vector<uint16_t> tail;  // a last block of fewer than 16 weight rows, zero-padded
  // 16 weight rows x the group's columns. epilogue16 reads past a group's stored columns
  // (to column P (group_rows - 16) + 16 P - 1 = 95 at most: never past a row) values of
  // earlier calls or the first zeros, which it never stores.
  alignas(64) thread_local float acc[2][16 * kGroup * 16] = {};
  constexpr size_t lda = kGroup * 16;
  // A product of more than one column block takes long enough per weight tile to stall on
  // it: in the first group (later ones find the weights in L2) the tile two k steps ahead
  // is prefetched. A one-block product (decoding) is bound by the weight stream itself
  // and runs best without.
  constexpr size_t kAhead = 2;
  // A block's epilogue reads its tile stores back; run right after them, it held back the
  // next block's weight loads (a 1 x 2 product of 8192 x 768 took 0.61 ms against 1 x 1's
  // 0.49, whose epilogue is shortest). So each block's epilogue runs in the next block's k
  // loop, once that block's first weight tiles are on their way, from the other of two
  // buffers (1 x 2: 0.49 ms; 1 x 9: 0.69 -> 0.57). The bits do not change.
  struct Pending {
    const float* s = nullptr;
    size_t m0 = 0, m1 = 0, r0 = 0, nr = 0;
  } pending;
  auto finish = [&]() {
    if (pending.s == nullptr) return;
    // Up to 3 rows (decoding) go scalar: the transposes would cost more than they save.
    if (pending.m1 - pending.m0 < 4) epilogue(a, P, pending.s, lda, pending.m0, pending.m1, pending.r0, pending.nr);
    else if (P == 3) epilogue16<3>(a, pending.s, lda, pending.m0, pending.m1, pending.r0, pending.nr);
    else epilogue16<2>(a, pending.s, lda, pending.m0, pending.m1, pending.r0, pending.nr);
    pending.s = nullptr;
  };
  const size_t kEpilogue = std::min<size_t>(kb - 1, 4);
  const uint16_t* w = static_cast<const uint16_t*>(a.w);
  size_t buf = 0;
  for (size_t g = 0; g < cb; g += kGroup) {
    const size_t gb = std::min(kGroup, cb - g);
    const size_t m0 = g / kGroup * group_rows, m1 = std::min(M, m0 + group_rows);
    for (size_t r0 = n0; r0 < n1; r0 += 16) {
      const size_t nr = std::min<size_t>(16, n - r0);
      const uint16_t* wb = w + r0 * a.ldw;
      size_t ldw = a.ldw;
      if (nr < 16) {
        tail.assign(16 * K, 0);
        for (size_t r = 0; r < nr; ++r) std::memcpy(tail.data() + r * K, wb + r * a.ldw, K * 2);
        wb = tail.data();
        ldw = K;
      }
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      _tile_zero(4);
      _tile_zero(5);
      const bool pf = cb > 1 && g == 0;
      for (size_t kk = 0; kk < kb; ++kk) {
        if (pf && kk + kAhead < kb)
          for (size_t r = 0; r < 16; ++r) _mm_prefetch(reinterpret_cast<const char*>(wb + r * ldw + (kk + kAhead) * 32), _MM_HINT_T0);
        _tile_loadd(6, wb + kk * 32, ldw * 2);
        const uint16_t* bt = packed + (kk * cb + g) * kTileElems;
#define SPECULA_AMX_STEP(i)                  \
  if (i < gb) {                              \
    _tile_loadd(7, bt + i * kTileElems, 64); \
    _tile_dpbf16ps(i, 6, 7);                 \
  }
        SPECULA_AMX_STEP(0)
        SPECULA_AMX_STEP(1)
        SPECULA_AMX_STEP(2)
        SPECULA_AMX_STEP(3)
        SPECULA_AMX_STEP(4)
        SPECULA_AMX_STEP(5)
#undef SPECULA_AMX_STEP
        if (kk == kEpilogue) finish();
      }
      float* accb = acc[buf];
#define SPECULA_AMX_STORE(i) \
  if (i < gb) _tile_stored(i, accb + i * 16, lda * 4);
      SPECULA_AMX_STORE(0)
      SPECULA_AMX_STORE(1)
      SPECULA_AMX_STORE(2)
      SPECULA_AMX_STORE(3)
      SPECULA_AMX_STORE(4)
      SPECULA_AMX_STORE(5)
#undef SPECULA_AMX_STORE
      pending = Pending{accb, m0, m1, r0, nr};
      buf ^= 1;
    }
  }
  finish();
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // !SPECULA_HAVE_AMX

void pack(const float*, size_t, size_t, size_t, uint16_t*, size_t, size_t) {}
void matmul(const simd::MatmulArgs&, const uint16_t*, size_t, size_t, size_t) {}

#endif

}  // namespace specula::amx
