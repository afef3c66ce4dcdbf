// The model runtime: the matmul / attention / norm kernels against double references on
// every instruction-set level, the tree reduction's bit-exactness across levels, and a
// tiny random Llama (f32, f16, bf16; GQA, biases, llama3 RoPE, tied embeddings) against
// a naive double forward; cached decoding, truncation and ragged batches bitwise; errors.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "amx.h"
#include "check.h"
#include "error.h"
#include "engine.h"
#include "model.h"
#include "simd.h"
#include "thread_pool.h"

using specula::simd::WType;

namespace {

const char* kLevels[] = {"avx512", "avx2", "portable"};

// Exact decodes (independent of the kernels').
float bf16_value(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
float f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000) ? -1 : 1;
  if (e == 0) return float(s * std::ldexp(double(m), -24));
  return float(s * std::ldexp(double(1024 + m), e - 25));
}
// Round to nearest even by bisection over the (monotonic) positive halves: independent
// of any conversion instruction. Magnitudes stay far below the f16 range here.
uint16_t to_f16(float x) {
  const double a = std::fabs(double(x));
  uint32_t lo = 0, hi = 0x7bff;  // f16_value(lo) <= a, find the last such
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (double(f16_value(uint16_t(mid))) <= a) lo = mid;
    else hi = mid - 1;
  }
  uint32_t h = lo;
  if (h < 0x7bff) {
    const double d0 = a - f16_value(uint16_t(h)), d1 = double(f16_value(uint16_t(h + 1))) - a;
    if (d1 < d0 || (d1 == d0 && (h & 1))) ++h;
  }
  return uint16_t(h | (x < 0 ? 0x8000 : 0));
}
uint16_t to_bf16(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const uint32_t lsb = (b >> 16) & 1;
  return uint16_t((b + 0x7fff + lsb) >> 16);
}

// A weight matrix in a given storage type and its exact f32 values.
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};
Stored store(const std::vector<float>& v, WType t) {
  Stored s;
  s.values.resize(v.size());
  s.bytes.resize(v.size() * (t == WType::F32 ? 4 : 2));
  std::vector<uint16_t> f16_cache;
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == WType::F32) {
      std::memcpy(s.bytes.data() + 4 * i, &v[i], 4);
      s.values[i] = v[i];
    } else {
      const uint16_t h = t == WType::F16 ? to_f16(v[i]) : to_bf16(v[i]);
      std::memcpy(s.bytes.data() + 2 * i, &h, 2);
      s.values[i] = t == WType::F16 ? f16_value(h) : bf16_value(h);
    }
  }
  return s;
}

std::vector<float> randn(std::mt19937_64& rng, size_t n, double scale, double mean = 0) {
  std::normal_distribution<double> d(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = float(d(rng));
  return v;
}

// Whether y (rows x N) is x (rows x K, row stride ldx) times the weights' rows (N x K,
// exact values) in double, plus bias and y0 where given: within 4e-6 of sum |x w| + 1.
bool matmul_matches_double(const std::vector<float>& y, const std::vector<float>& x, size_t ldx, size_t rows, size_t K,
                           const Stored& w, size_t N, const float* bias, const float* y0, double tol = 4e-6) {
  for (size_t t = 0; t < rows; ++t)
    for (size_t n = 0; n < N; ++n) {
      double s = 0, mag = 0;
      for (size_t j = 0; j < K; ++j) {
        s += double(x[t * ldx + j]) * w.values[n * K + j];
        mag += std::fabs(double(x[t * ldx + j]) * w.values[n * K + j]);
      }
      if (bias != nullptr) s += bias[n];
      if (y0 != nullptr) s += y0[t * N + n];
      if (!(std::fabs(y[t * N + n] - s) <= tol * (mag + 1))) return false;
    }
  return true;
}

TEST_CASE(reduce_tree_is_bit_exact_across_levels) {
  // A matmul with k = 16 reads each lane once: y = tree16(x * w) exactly as defined.
  std::mt19937_64 rng(1);
  std::vector<float> x(16), w(16 * 16);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int trial = 0; trial < 200; ++trial) {
    for (float& v : x) v = u(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
    for (float& v : w) v = u(rng);
    float want[16];
    for (int n = 0; n < 16; ++n) {
      float l[16];
      for (int i = 0; i < 16; ++i) l[i] = x[i] * w[n * 16 + i];  // exact? no: rounded product
      // The kernel uses fma(x, w, 0) = the rounded product too.
      float s8[8], s4[4];
      for (int i = 0; i < 8; ++i) s8[i] = l[i] + l[i + 8];
      for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
      want[n] = (s4[0] + s4[2]) + (s4[1] + s4[3]);
    }
    for (const char* level : kLevels) {
      const specula::simd::Kernels* k = specula::simd::kernels_for(level);
      if (k == nullptr) continue;
      float y[16];
      specula::simd::MatmulArgs a{x.data(), 16, 1, 16, w.data(), WType::F32, 16, nullptr, y, 16, false};
      k->matmul(a, 0, 16, nullptr);
      for (int n = 0; n < 16; ++n) CHECK_MSG(y[n] == want[n], std::string(level) + " n=" + std::to_string(n));
    }
  }
}

TEST_CASE(matmul_matches_double_and_is_batch_invariant) {
  std::mt19937_64 rng(2);
  const WType types[] = {WType::F32, WType::F16, WType::BF16};
  // Both prefetch policies (simd.h, matmul_prefetch): the full products under one, each
  // row alone under the other, so that their code paths are checked and give the same bits.
  using specula::simd::PrefetchLevel;
  const PrefetchLevel saved = specula::simd::matmul_prefetch();
  for (int trial = 0; trial < 72; ++trial) {
    const PrefetchLevel pf = (trial / 3) % 2 ? PrefetchLevel::L2 : PrefetchLevel::L1;
    const PrefetchLevel other = pf == PrefetchLevel::L1 ? PrefetchLevel::L2 : PrefetchLevel::L1;
    // The last trials: the many-row tiles (more than 12 rows, some past a 64-row block)
    // with k past one part of the k split (simd_model.inc, kKPart = 768), and a tail.
    const bool deep = trial >= 60;
    const size_t rows = deep ? 13 + rng() % 63 : 1 + rng() % 14, K = deep ? 700 + rng() % 1000 : 1 + rng() % 90;
    const size_t N = deep ? 1 + rng() % 30 : 1 + rng() % 70;
    const WType wt = types[trial % 3];
    const std::vector<float> x = randn(rng, rows * K, 1.0);
    const Stored w = store(randn(rng, N * K, 0.5), wt);
    const std::vector<float> bias = randn(rng, N, 1.0);
    const std::vector<float> y0 = randn(rng, rows * N, 1.0);
    const bool use_bias = trial % 2 == 0, accumulate = trial % 4 < 2;
    std::vector<float> ref_out;
    std::vector<float> first;
    for (const char* level : kLevels) {
      const specula::simd::Kernels* k = specula::simd::kernels_for(level);
      if (k == nullptr) continue;
      std::vector<float> y = y0;
      specula::simd::MatmulArgs a{x.data(), K, rows, K, w.bytes.data(), wt, K, use_bias ? bias.data() : nullptr,
                                  y.data(), N, accumulate};
      // Columns in two uneven ranges (as two threads would).
      const size_t split = rng() % (N + 1);
      std::vector<float> scratch(N * K);
      specula::simd::set_matmul_prefetch(pf);
      k->matmul(a, 0, split, trial % 5 == 0 ? nullptr : scratch.data());
      k->matmul(a, split, N, scratch.data());
      CHECK_MSG(matmul_matches_double(y, x, K, rows, K, w, N, use_bias ? bias.data() : nullptr,
                                      accumulate ? y0.data() : nullptr),
                std::string(level) + " rows=" + std::to_string(rows) + " K=" + std::to_string(K));
      // Each row alone gives the same bits.
      specula::simd::set_matmul_prefetch(other);
      for (size_t t = 0; t < rows; ++t) {
        std::vector<float> yr(y0.begin() + t * N, y0.begin() + (t + 1) * N);
        specula::simd::MatmulArgs b = a;
        b.x = x.data() + t * K;
        b.rows = 1;
        b.y = yr.data();
        k->matmul(b, 0, N, nullptr);
        CHECK_MSG(std::memcmp(yr.data(), y.data() + t * N, N * 4) == 0, std::string(level) + " row alone");
      }
      if (std::strcmp(level, "portable") != 0) {
        if (first.empty()) first = y;
        else CHECK_MSG(std::memcmp(first.data(), y.data(), y.size() * 4) == 0, "avx2 == avx512 bitwise");
      }
    }
  }
  specula::simd::set_matmul_prefetch(saved);
}

TEST_CASE(matmul_with_packed_x_matches_double_and_gives_the_same_bits) {
  // simd.h, packs_x / pack_x: sweeps of 5..12 rows read x packed where the caller packs
  // it (x rows 4 KiB apart: ldx 1024 or 2048 floats); other row counts ignore xp. K past a
  // multiple of 16 leaves a tail that the kernel reads from x.
  std::mt19937_64 rng(5);
  const WType types[] = {WType::F32, WType::F16, WType::BF16};
  int packed = 0;
  for (int trial = 0; trial < 36; ++trial) {
    const size_t rows = 2 + trial % 12, ldx = trial % 4 == 3 ? 2048 : 1024;
    const size_t K = trial % 3 == 0 ? 1024 : trial % 3 == 1 ? 1000 : 16 + rng() % 1008, N = 1 + rng() % 40;
    const WType wt = types[(trial / 12) % 3];
    std::vector<float> x = randn(rng, rows * ldx, 1.0);
    const Stored w = store(randn(rng, N * K, 0.5), wt);
    const std::vector<float> bias = randn(rng, N, 1.0);
    std::vector<float> xp(rows * (K / 16) * 16);
    for (const char* level : kLevels) {
      const specula::simd::Kernels* k = specula::simd::kernels_for(level);
      if (k == nullptr) continue;
      std::vector<float> y(rows * N), yp(rows * N);
      specula::simd::MatmulArgs a{x.data(), ldx, rows, K, w.bytes.data(), wt, K, bias.data(), y.data(), N, false};
      k->matmul(a, 0, N, nullptr);
      specula::simd::MatmulArgs b = a;
      b.y = yp.data();
      specula::simd::pack_x(b, xp.data());
      b.xp = xp.data();
      packed += specula::simd::packs_x(b) ? 1 : 0;
      const size_t split = rng() % (N + 1);  // as two threads would
      k->matmul(b, 0, split, nullptr);
      k->matmul(b, split, N, nullptr);
      const std::string what = std::string(level) + " rows=" + std::to_string(rows) + " K=" + std::to_string(K);
      CHECK_MSG(matmul_matches_double(yp, x, ldx, rows, K, w, N, bias.data(), nullptr), what);
      CHECK_MSG(std::memcmp(y.data(), yp.data(), y.size() * 4) == 0, what + ": packed and unpacked bits");
    }
  }
  CHECK(packed > 0);
}

// x rounded to bf16 (8 significant bits) to nearest, ties to even, in double arithmetic
// (an independent statement of the two-piece split of amx.h).
double round_bf16(double x) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e = 0;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  const double ulp = std::ldexp(1.0, e - 8);
  return std::nearbyint(x / ulp) * ulp;  // the default rounding mode: to nearest, ties to even
}

TEST_CASE(amx_bf16_matmul_matches_double_and_is_batch_invariant) {
  // The AMX path of bf16 products (amx.h), where the CPU has it, with three pieces and
  // with two. Against double sums of the bf16 weights times the activations as the pieces
  // represent them: the f32 values themselves (three pieces: exact), or hi + lo with hi =
  // x rounded to bf16 and lo = x - hi rounded to bf16 (two). Each row alone gives the same
  // bits as in any batch (1 to 100 rows: one to five column groups, whose sums go through
  // the scalar or the transposing epilogue, each block's during the next block's
  // products); a last block of fewer than 16 weight rows,
  // bias, accumulate, columns split between two calls, activations packed in two k
  // ranges, and a row stride past k.
  if (!specula::amx::available()) {
    std::printf("     (no AMX on this CPU: the AMX path is not tested here)\n");
    return;
  }
  const int pieces_before = specula::amx::pieces();
  for (const int P : {3, 2}) {
    specula::amx::set_pieces(P);
    CHECK_EQ(specula::amx::pieces(), P);
    std::mt19937_64 rng(7);
    for (int trial = 0; trial < 24; ++trial) {
      const size_t rows_set[] = {1, 3, 5, 11, 40, 85, 100};
      const size_t rows = rows_set[trial % 7], K = 32 * (1 + rng() % 24), N = 1 + rng() % 90, ldx = K + trial % 3;
      const std::vector<float> x = randn(rng, rows * ldx, trial % 2 ? 30.0 : 0.01);
      const Stored w = store(randn(rng, N * K, 0.5), WType::BF16);
      const std::vector<float> bias = randn(rng, N, 1.0);
      const std::vector<float> y0 = randn(rng, rows * N, 1.0);
      const bool use_bias = trial % 3 == 0, accumulate = trial % 4 < 2;
      auto run = [&](const float* xs, size_t r_count, float* y) {
        specula::simd::MatmulArgs a{xs, ldx, r_count, K, w.bytes.data(), WType::BF16, K,
                                    use_bias ? bias.data() : nullptr, y, N, accumulate};
        CHECK(specula::amx::usable(a));
        // Packed in two ranges of k blocks (two threads' shares), over garbage: a block
        // that neither range wrote would show.
        std::vector<uint16_t> packed(specula::amx::packed_size(r_count, K), 0x7F80);
        const size_t kb_split = rng() % (K / 32 + 1);
        specula::amx::pack(xs, ldx, r_count, K, packed.data(), 0, kb_split);
        specula::amx::pack(xs, ldx, r_count, K, packed.data(), kb_split, K / 32);
        const size_t split = N < 16 ? 0 : 16 * (rng() % (N / 16 + 1));  // two threads' column ranges
        specula::amx::matmul(a, packed.data(), 0, split, N);
        specula::amx::matmul(a, packed.data(), split, N, N);
      };
      std::vector<float> y = y0;
      run(x.data(), rows, y.data());
      // What the pieces represent, in double (x itself for three pieces).
      std::vector<float> xp = x;
      if (P == 2)
        for (float& v : xp) {
          const double hi = round_bf16(v);
          v = float(hi + round_bf16(double(v) - hi));  // 16 or 17 significant bits: exact in f32
        }
      // f32 accumulation of exact products: ~4e-8 of sum |w x| (two pieces against x
      // itself: ~5e-7).
      CHECK_MSG(matmul_matches_double(y, xp, ldx, rows, K, w, N, use_bias ? bias.data() : nullptr,
                                      accumulate ? y0.data() : nullptr, 4e-7),
                "amx pieces=" + std::to_string(P) + " rows=" + std::to_string(rows) + " K=" + std::to_string(K) +
                    " N=" + std::to_string(N));
      for (size_t t = 0; t < rows; t += 1 + rows / 7) {
        std::vector<float> yr(y0.begin() + t * N, y0.begin() + (t + 1) * N);
        run(x.data() + t * ldx, 1, yr.data());
        CHECK_MSG(std::memcmp(yr.data(), y.data() + t * N, N * 4) == 0, "amx row alone");
      }
    }
    // An activation that rounds to infinity in bf16 (FLT_MAX) still gives a finite product.
    std::vector<float> xm(32, 0.0f), ym(1, 0.0f);
    xm[5] = FLT_MAX;
    const Stored wm = store(std::vector<float>(32, 0.5f), WType::BF16);
    specula::simd::MatmulArgs am{xm.data(), 32, 1, 32, wm.bytes.data(), WType::BF16, 32, nullptr, ym.data(), 1, false};
    std::vector<uint16_t> pm(specula::amx::packed_size(1, 32));
    specula::amx::pack(xm.data(), 32, 1, 32, pm.data());
    specula::amx::matmul(am, pm.data(), 0, 1, 1);
    CHECK_NEAR(ym[0], 0.5 * FLT_MAX, 0, 1e-6 * FLT_MAX);
  }
  specula::amx::set_pieces(pieces_before);
}

TEST_CASE(attention_matches_double) {
  // rows consecutive positions x 3 query heads on one key/value head, keys in panels of
  // 16 positions, against a double softmax(q k / sqrt(hd)) v; each (row, head) alone
  // gives the same bits; avx2 and avx512 agree bitwise.
  std::mt19937_64 rng(3);
  for (const size_t hd : {8, 16, 24, 64, 80}) {
    for (const size_t n0 : {1, 5, 16, 17, 64, 100, 130}) {
      for (const size_t rows : {1, 3, 8}) {
        const size_t heads = 3, n = n0 + rows - 1, n16 = (n + 15) / 16 * 16, ld = hd + 8;
        const std::vector<float> k = randn(rng, n * ld, 1.0), v = randn(rng, n * ld, 1.0);
        // Panels; the lanes past position n - 1 hold NaN, which must not matter.
        std::vector<float> kp(n16 * hd, std::nanf(""));
        for (size_t j = 0; j < n; ++j)
          for (size_t d = 0; d < hd; ++d) kp[j / 16 * hd * 16 + d * 16 + j % 16] = k[j * ld + d];
        const size_t q_head = hd + 3, q_row = heads * q_head + 5, out_head = hd + 5, out_row = heads * out_head + 2;
        const std::vector<float> q = randn(rng, rows * q_row, 1.0);
        const float scale = float(1 / std::sqrt(double(hd)));
        auto args = [&](const float* qp, size_t r_count, size_t h_count, size_t first_n, float* scores, float* out) {
          specula::simd::AttendArgs a;
          a.q = qp;
          a.q_row = q_row;
          a.q_head = q_head;
          a.rows = r_count;
          a.heads = h_count;
          a.n0 = first_n;
          a.kp = kp.data();
          a.v = v.data();
          a.ldv = ld;
          a.hd = hd;
          a.scale = scale;
          a.scores = scores;
          a.out = out;
          a.out_row = out_row;
          a.out_head = out_head;
          a.next_kp = nullptr;  // a prefetch hint only
          a.next_k_floats = 0;
          return a;
        };
        std::vector<float> first;
        for (const char* level : kLevels) {
          const specula::simd::Kernels* kn = specula::simd::kernels_for(level);
          if (kn == nullptr) continue;
          std::vector<float> scores(rows * heads * (n16 + hd)), out(rows * out_row, 7.0f);
          specula::simd::AttendArgs all = args(q.data(), rows, heads, n0, scores.data(), out.data());
          all.next_kp = kp.data();
          all.next_k_floats = kp.size();
          kn->attend(all);
          for (size_t r = 0; r < rows; ++r)
            for (size_t h = 0; h < heads; ++h) {
              const float* qv = q.data() + r * q_row + h * q_head;
              const size_t nr = n0 + r;
              std::vector<double> sc(nr), want(hd, 0.0);
              double m = -1e300, z = 0;
              for (size_t j = 0; j < nr; ++j) {
                double dot = 0;
                for (size_t d = 0; d < hd; ++d) dot += double(qv[d]) * k[j * ld + d];
                sc[j] = dot * scale;
                m = std::max(m, sc[j]);
              }
              for (size_t j = 0; j < nr; ++j) z += std::exp(sc[j] - m);
              for (size_t j = 0; j < nr; ++j)
                for (size_t d = 0; d < hd; ++d) want[d] += std::exp(sc[j] - m) / z * v[j * ld + d];
              const float* o = out.data() + r * out_row + h * out_head;
              for (size_t d = 0; d < hd; ++d) CHECK_NEAR(o[d], want[d], 0, 2e-6);
              for (size_t d = hd; d < out_head && h * out_head + d < out_row; ++d) CHECK_EQ(o[d], 7.0f);  // gaps untouched
              // The same (row, head) alone: the same bits.
              std::vector<float> s1(n16 + hd), o1(out_head, 7.0f);
              kn->attend(args(qv, 1, 1, nr, s1.data(), o1.data()));
              CHECK(std::memcmp(o1.data(), o, hd * 4) == 0);
              CHECK_EQ(o1[hd], 7.0f);  // nothing written past hd
            }
          for (size_t r = 0; r < rows; ++r)
            for (size_t d = heads * out_head; d < out_row; ++d) CHECK_EQ(out[r * out_row + d], 7.0f);
          if (std::strcmp(level, "portable") != 0) {
            if (first.empty()) first = out;
            else CHECK_MSG(std::memcmp(first.data(), out.data(), out.size() * 4) == 0, "avx2 == avx512 bitwise");
          }
        }
      }
    }
  }
}

TEST_CASE(rmsnorm_silu_widen_match_double) {
  std::mt19937_64 rng(4);
  for (const size_t n : {1, 7, 16, 33, 300}) {
    const std::vector<float> x = randn(rng, n, 2.0), w = randn(rng, n, 1.0, 1.0), g = randn(rng, n, 4.0),
                             u = randn(rng, n, 1.0);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double r = 1 / std::sqrt(ss / n + 1e-5);
    for (const char* level : kLevels) {
      const specula::simd::Kernels* k = specula::simd::kernels_for(level);
      if (k == nullptr) continue;
      std::vector<float> out(n);
      k->rmsnorm(x.data(), w.data(), n, 1e-5f, out.data());
      for (size_t i = 0; i < n; ++i) CHECK_NEAR(out[i], x[i] * r * w[i], 1e-6, 1e-7);
      k->silu_mul(g.data(), u.data(), n, out.data());
      for (size_t i = 0; i < n; ++i) CHECK_NEAR(out[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-6, 1e-30);
      for (WType t : {WType::F16, WType::BF16}) {
        const Stored s = store(x, t);
        k->widen(s.bytes.data(), t, n, out.data());
        CHECK(std::memcmp(out.data(), s.values.data(), n * 4) == 0);
      }
    }
  }
  // Extreme SiLU arguments stay finite.
  const float g[3] = {-200.0f, 200.0f, 0.0f}, u[3] = {1, 1, 1};
  float o[3];
  specula::simd::kernels().silu_mul(g, u, 3, o);
  CHECK(o[0] <= 0.0f && o[0] > -1e-30f && o[1] == 200.0f && o[2] == 0.0f);
}

// ---------------------------------------------------------------------------------------
// A tiny random model, written to a temporary file, and a double reference forward.

struct TinyModel {
  specula::ModelConfig config;
  std::string path;
  std::vector<specula::TensorSpec> specs;
  std::vector<std::pair<std::string, std::vector<float>>> values;  // exact f32 values by name
  const std::vector<float>& get(const std::string& name) const {
    for (auto& p : values)
      if (p.first == name) return p.second;
    std::fprintf(stderr, "no tensor %s\n", name.c_str());
    std::abort();
  }
  ~TinyModel() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

std::unique_ptr<TinyModel> make_model(const specula::ModelConfig& c, WType wt, uint64_t seed) {
  auto m = std::make_unique<TinyModel>();
  m->config = c;
  char tmpl[] = "/tmp/specula-model-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  m->path = tmpl;
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> file(24, 0);  // some leading bytes, as a header would be
  const char* dt = wt == WType::F32 ? "F32" : wt == WType::F16 ? "F16" : "BF16";
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, double scale, double mean) {
    size_t n = 1;
    for (auto d : shape) n *= d;
    const Stored s = store(randn(rng, n, scale, mean), wt);
    specula::TensorSpec t;
    t.name = name;
    t.file = 0;
    t.offset = file.size();
    t.bytes = s.bytes.size();
    t.dtype = dt;
    t.shape = shape;
    file.insert(file.end(), s.bytes.begin(), s.bytes.end());
    m->specs.push_back(t);
    m->values.push_back({name, s.values});
  };
  const size_t qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  add("model.embed_tokens.weight", {c.vocab, c.hidden}, 1.0, 0);
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab, c.hidden}, 0.3, 0);
  add("model.norm.weight", {c.hidden}, 0.2, 1);
  for (size_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {c.hidden}, 0.2, 1);
    add(p + "post_attention_layernorm.weight", {c.hidden}, 0.2, 1);
    const double s = 1 / std::sqrt(double(c.hidden));
    add(p + "self_attn.q_proj.weight", {qd, c.hidden}, 2 * s, 0);
    add(p + "self_attn.k_proj.weight", {kvd, c.hidden}, 2 * s, 0);
    add(p + "self_attn.v_proj.weight", {kvd, c.hidden}, s, 0);
    add(p + "self_attn.o_proj.weight", {c.hidden, qd}, 1 / std::sqrt(double(qd)), 0);
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {qd}, 0.3, 0);
      add(p + "self_attn.k_proj.bias", {kvd}, 0.3, 0);
      add(p + "self_attn.v_proj.bias", {kvd}, 0.3, 0);
    }
    if (c.o_bias) add(p + "self_attn.o_proj.bias", {c.hidden}, 0.3, 0);
    add(p + "mlp.gate_proj.weight", {c.intermediate, c.hidden}, 2 * s, 0);
    add(p + "mlp.up_proj.weight", {c.intermediate, c.hidden}, s, 0);
    add(p + "mlp.down_proj.weight", {c.hidden, c.intermediate}, 1 / std::sqrt(double(c.intermediate)), 0);
  }
  if (::write(fd, file.data(), file.size()) != ssize_t(file.size())) std::abort();
  ::close(fd);
  return m;
}

// Naive double forward of the whole sequence; logits (n, vocab).
std::vector<double> reference_forward(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const specula::ModelConfig& c = m.config;
  const size_t n = tokens.size(), H = c.hidden, hd = c.head_dim, qd = c.heads * hd, kvd = c.kv_heads * hd;
  std::vector<double> h(n * H);
  const auto& E = m.get("model.embed_tokens.weight");
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < H; ++i) h[t * H + i] = E[size_t(tokens[t]) * H + i];
  auto norm = [&](const std::vector<double>& x, size_t t, const std::vector<float>& w, std::vector<double>& out) {
    double ss = 0;
    for (size_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
    const double r = 1 / std::sqrt(ss / H + c.rms_eps);
    out.resize(H);
    for (size_t i = 0; i < H; ++i) out[i] = x[t * H + i] * r * w[i];
  };
  auto linear = [&](const std::vector<double>& x, const std::vector<float>& W, size_t N, size_t Kd, const std::vector<float>* b) {
    std::vector<double> y(N);
    for (size_t o = 0; o < N; ++o) {
      double s = b ? (*b)[o] : 0;
      for (size_t i = 0; i < Kd; ++i) s += x[i] * W[o * Kd + i];
      y[o] = s;
    }
    return y;
  };
  // RoPE with the model's float inverse frequencies (HF keeps them in float).
  std::vector<float> inv(hd / 2);
  const double pi = 3.14159265358979323846;
  for (size_t i = 0; i < hd / 2; ++i) {
    double f = 1 / std::pow(c.rope_theta, double(2 * i) / hd);
    if (c.rope_llama3) {
      const double wl = 2 * pi / f, lw = c.rope_original_max / c.rope_low_freq, hw = c.rope_original_max / c.rope_high_freq;
      if (wl > lw) f /= c.rope_factor;
      else if (wl >= hw) {
        const double sm = (c.rope_original_max / wl - c.rope_low_freq) / (c.rope_high_freq - c.rope_low_freq);
        f = (1 - sm) * f / c.rope_factor + sm * f;
      }
    }
    inv[i] = float(f);
  }
  auto rope = [&](std::vector<double>& v, size_t off, size_t pos) {
    for (size_t i = 0; i < hd / 2; ++i) {
      const double a = double(inv[i]) * pos, x1 = v[off + i], x2 = v[off + i + hd / 2];
      v[off + i] = x1 * std::cos(a) - x2 * std::sin(a);
      v[off + i + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  };
  std::vector<double> a;
  for (size_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> Q(n), Kc(n), Vc(n);
    const bool bias = c.qkv_bias;
    for (size_t t = 0; t < n; ++t) {
      norm(h, t, m.get(p + "input_layernorm.weight"), a);
      Q[t] = linear(a, m.get(p + "self_attn.q_proj.weight"), qd, H, bias ? &m.get(p + "self_attn.q_proj.bias") : nullptr);
      Kc[t] = linear(a, m.get(p + "self_attn.k_proj.weight"), kvd, H, bias ? &m.get(p + "self_attn.k_proj.bias") : nullptr);
      Vc[t] = linear(a, m.get(p + "self_attn.v_proj.weight"), kvd, H, bias ? &m.get(p + "self_attn.v_proj.bias") : nullptr);
      for (size_t hh = 0; hh < c.heads; ++hh) rope(Q[t], hh * hd, t);
      for (size_t g = 0; g < c.kv_heads; ++g) rope(Kc[t], g * hd, t);
    }
    for (size_t t = 0; t < n; ++t) {
      std::vector<double> o(qd, 0.0);
      for (size_t hh = 0; hh < c.heads; ++hh) {
        const size_t g = hh / (c.heads / c.kv_heads);
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (size_t j = 0; j <= t; ++j) {
          double d = 0;
          for (size_t i = 0; i < hd; ++i) d += Q[t][hh * hd + i] * Kc[j][g * hd + i];
          s[j] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        for (size_t j = 0; j <= t; ++j) z += std::exp(s[j] - mx);
        for (size_t j = 0; j <= t; ++j)
          for (size_t i = 0; i < hd; ++i) o[hh * hd + i] += std::exp(s[j] - mx) / z * Vc[j][g * hd + i];
      }
      const auto y = linear(o, m.get(p + "self_attn.o_proj.weight"), H, qd, c.o_bias ? &m.get(p + "self_attn.o_proj.bias") : nullptr);
      for (size_t i = 0; i < H; ++i) h[t * H + i] += y[i];
    }
    for (size_t t = 0; t < n; ++t) {
      norm(h, t, m.get(p + "post_attention_layernorm.weight"), a);
      const auto g = linear(a, m.get(p + "mlp.gate_proj.weight"), c.intermediate, H, nullptr);
      const auto u = linear(a, m.get(p + "mlp.up_proj.weight"), c.intermediate, H, nullptr);
      std::vector<double> act(c.intermediate);
      for (size_t i = 0; i < c.intermediate; ++i) act[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const auto y = linear(act, m.get(p + "mlp.down_proj.weight"), H, c.intermediate, nullptr);
      for (size_t i = 0; i < H; ++i) h[t * H + i] += y[i];
    }
  }
  const auto& W = c.tie_embeddings ? E : m.get("lm_head.weight");
  std::vector<double> out(n * c.vocab);
  for (size_t t = 0; t < n; ++t) {
    norm(h, t, m.get("model.norm.weight"), a);
    const auto y = linear(a, W, c.vocab, H, nullptr);
    std::copy(y.begin(), y.end(), out.begin() + t * c.vocab);
  }
  return out;
}

specula::ModelConfig tiny_config(int variant) {
  specula::ModelConfig c;
  c.vocab = 37;
  c.hidden = 40;  // not a multiple of 16: tails everywhere
  c.intermediate = 56;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = variant == 1 ? 4 : 2;
  c.head_dim = 10;
  c.rms_eps = 1e-5;
  c.rope_theta = variant == 2 ? 500000 : 10000;
  c.rope_llama3 = variant == 2;
  c.rope_factor = 8;
  c.rope_low_freq = 1;
  c.rope_high_freq = 4;
  c.rope_original_max = 16;
  c.tie_embeddings = variant == 1;
  c.qkv_bias = variant == 1;  // Qwen2-like
  c.o_bias = false;
  c.context = 64;
  return c;
}

std::vector<float> run_full(std::shared_ptr<const specula::Model> model, const std::vector<int32_t>& tokens) {
  specula::KvCache cache(model, 1, tokens.size());
  std::vector<float> out(tokens.size() * model->config().vocab);
  specula::ForwardItem it{0, tokens.data(), tokens.size(), tokens.size()};
  cache.forward(&it, 1, out.data());
  return out;
}

TEST_CASE(tiny_model_matches_double_reference) {
  for (int variant = 0; variant < 3; ++variant)
    for (WType wt : {WType::F32, WType::F16, WType::BF16}) {
      const auto tm = make_model(tiny_config(variant), wt, 10 + variant);
      auto model = std::make_shared<const specula::Model>(tm->config, std::vector<std::string>{tm->path}, tm->specs);
      std::vector<int32_t> tokens = {1, 5, 36, 0, 7, 7, 20, 3, 11, 30, 2, 9, 14, 33, 8, 16, 4, 25, 19, 21};
      const auto ref = reference_forward(*tm, tokens);
      for (const char* level : kLevels) {
        if (!specula::simd::set_level(level)) continue;
        const auto got = run_full(model, tokens);
        double worst = 0, mag = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          worst = std::max(worst, std::fabs(got[i] - ref[i]));
          mag = std::max(mag, std::fabs(ref[i]));
        }
        CHECK_MSG(worst <= 1e-4 && mag > 0.5, std::string(level) + " variant " + std::to_string(variant) +
                                                  " err " + std::to_string(worst) + " mag " + std::to_string(mag));
      }
      if (!specula::simd::set_level("avx512") && !specula::simd::set_level("avx2")) specula::simd::set_level("portable");
    }
}

TEST_CASE(cache_truncate_and_ragged_batches_are_bitwise) {
  const auto tm = make_model(tiny_config(0), WType::BF16, 21);
  auto model = std::make_shared<const specula::Model>(tm->config, std::vector<std::string>{tm->path}, tm->specs);
  const size_t V = tm->config.vocab;
  const std::vector<int32_t> a = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3};
  const std::vector<int32_t> b = {2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0};
  for (int threads : {1, 2}) {
    specula::ThreadPool::global().set_threads(threads);
    const auto full_a = run_full(model, a);
    const auto full_b = run_full(model, b);
    // One token at a time.
    specula::KvCache cache(model, 3, 40);
    std::vector<float> row(V);
    for (size_t t = 0; t < a.size(); ++t) {
      specula::ForwardItem it{1, &a[t], 1, 1};
      cache.forward(&it, 1, row.data());
      CHECK_MSG(std::memcmp(row.data(), full_a.data() + t * V, V * 4) == 0, "incremental t=" + std::to_string(t));
    }
    CHECK_EQ(cache.length(1), a.size());
    // Truncate to 10 and forward the rest in chunks of 5 with all logits.
    cache.truncate(1, 10);
    for (size_t t = 10; t < a.size(); t += 5) {
      const size_t n = std::min<size_t>(5, a.size() - t);
      std::vector<float> out(n * V);
      specula::ForwardItem it{1, &a[t], n, n};
      cache.forward(&it, 1, out.data());
      CHECK_MSG(std::memcmp(out.data(), full_a.data() + t * V, n * V * 4) == 0, "after truncate t=" + std::to_string(t));
    }
    // Ragged: seq 0 gets b[0..9) (last 2 logits), seq 2 gets a[0..4) (all), then both decode.
    cache.reset();
    std::vector<float> out((2 + 4) * V);
    specula::ForwardItem items[2] = {{0, b.data(), 9, 2}, {2, a.data(), 4, 4}};
    cache.forward(items, 2, out.data());
    CHECK(std::memcmp(out.data(), full_b.data() + 7 * V, 2 * V * 4) == 0);
    CHECK(std::memcmp(out.data() + 2 * V, full_a.data(), 4 * V * 4) == 0);
    specula::ForwardItem items2[2] = {{2, a.data() + 4, 5, 5}, {0, b.data() + 9, 5, 1}};
    std::vector<float> out2(6 * V);
    cache.forward(items2, 2, out2.data());
    CHECK(std::memcmp(out2.data(), full_a.data() + 4 * V, 5 * V * 4) == 0);
    CHECK(std::memcmp(out2.data() + 5 * V, full_b.data() + 13 * V, V * 4) == 0);
  }
  specula::ThreadPool::global().set_threads(specula::ThreadPool::available_cores());
}

TEST_CASE(forwards_with_packed_sweeps_are_bitwise_and_match_double) {
  // An intermediate size of 1020 (rows padded to 1024 floats, 4 KiB): the down
  // projection of 5..12 rows reads its x packed (simd.h, packs_x), with a tail of 12.
  specula::ModelConfig c = tiny_config(0);
  c.intermediate = 1020;
  for (WType wt : {WType::F32, WType::BF16}) {
    const auto tm = make_model(c, wt, 41);
    auto model = std::make_shared<const specula::Model>(tm->config, std::vector<std::string>{tm->path}, tm->specs);
    const size_t V = c.vocab;
    std::vector<int32_t> tokens(40);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7 + 3) % V);
    const auto ref = reference_forward(*tm, tokens);
    for (int threads : {1, 2}) {
      specula::ThreadPool::global().set_threads(threads);
      const auto full = run_full(model, tokens);  // 40 rows: row groups, no sweep
      double worst = 0;
      for (size_t i = 0; i < full.size(); ++i) worst = std::max(worst, std::fabs(full[i] - ref[i]));
      CHECK_MSG(worst <= 1e-4, "vs double: " + std::to_string(worst));
      // Chunks of 1..12 rows (1..4: no packing; 5..12: packed), all logits.
      for (const std::vector<size_t>& sizes : {std::vector<size_t>{12, 10, 8, 6, 4}, {1, 3, 5, 7, 9, 11, 2, 2}}) {
        specula::KvCache cache(model, 1, tokens.size());
        size_t t = 0;
        for (size_t m : sizes) {
          std::vector<float> out(m * V);
          specula::ForwardItem it{0, tokens.data() + t, m, m};
          cache.forward(&it, 1, out.data());
          CHECK_MSG(std::memcmp(out.data(), full.data() + t * V, m * V * 4) == 0,
                    "chunk of " + std::to_string(m) + " at " + std::to_string(t) + ", " + std::to_string(threads) +
                        " threads");
          t += m;
        }
        CHECK_EQ(t, tokens.size());
      }
    }
  }
  specula::ThreadPool::global().set_threads(specula::ThreadPool::available_cores());
}

TEST_CASE(bad_models_and_calls_throw) {
  using specula::Code;
  const auto tm = make_model(tiny_config(0), WType::F32, 31);
  const std::vector<std::string> files = {tm->path};
  auto load = [&](const std::vector<specula::TensorSpec>& specs, specula::ModelConfig c) {
    return specula::Model(c, files, specs);
  };
  const specula::ModelConfig c = tm->config;
  {
    auto s = tm->specs;
    s.erase(s.begin() + 3);
    CHECK_THROWS_CODE(load(s, c), Code::Format);
  }
  {
    auto s = tm->specs;
    s[4].shape = {s[4].shape[1], s[4].shape[0]};
    CHECK_THROWS_CODE(load(s, c), Code::Shape);
  }
  {
    auto s = tm->specs;
    s[4].dtype = "I32";
    CHECK_THROWS_CODE(load(s, c), Code::Unsupported);
  }
  {
    auto s = tm->specs;
    s.back().offset += 1000000;
    CHECK_THROWS_CODE(load(s, c), Code::Format);
  }
  {
    auto s = tm->specs;
    s.back().offset = ~uint64_t(0) - 2;  // offset + bytes overflows
    CHECK_THROWS_CODE(load(s, c), Code::Format);
  }
  {
    auto s = tm->specs;
    s.push_back(s[2]);
    CHECK_THROWS_CODE(load(s, c), Code::Format);
  }
  {
    auto cc = c;
    cc.heads = 3;
    CHECK_THROWS_CODE(load(tm->specs, cc), Code::Arg);
  }
  CHECK_THROWS_CODE(specula::Model(c, {"/nonexistent/model.safetensors"}, tm->specs), Code::IO);

  auto model = std::make_shared<const specula::Model>(c, files, tm->specs);
  CHECK_THROWS_CODE(specula::KvCache(model, 1, c.context + 1), Code::Value);
  CHECK_THROWS_CODE(specula::KvCache(model, 0, 4), Code::Value);
  specula::KvCache cache(model, 2, 8);
  std::vector<float> out(16 * c.vocab);
  const int32_t toks[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const int32_t bad[2] = {1, int32_t(c.vocab)};
  specula::ForwardItem it{0, bad, 2, 1};
  CHECK_THROWS_CODE(cache.forward(&it, 1, out.data()), Code::Value);
  it = {0, toks, 9, 1};
  CHECK_THROWS_CODE(cache.forward(&it, 1, out.data()), Code::Shape);  // past capacity 8
  it = {2, toks, 1, 1};
  CHECK_THROWS_CODE(cache.forward(&it, 1, out.data()), Code::Value);
  it = {0, toks, 2, 3};
  CHECK_THROWS_CODE(cache.forward(&it, 1, out.data()), Code::Value);
  specula::ForwardItem twice[2] = {{0, toks, 1, 1}, {0, toks, 1, 1}};
  CHECK_THROWS_CODE(cache.forward(twice, 2, out.data()), Code::Arg);
  CHECK_EQ(cache.length(0), size_t(0));  // nothing changed
  it = {0, toks, 8, 1};
  cache.forward(&it, 1, out.data());
  CHECK_EQ(cache.length(0), size_t(8));
  CHECK_THROWS_CODE(cache.truncate(0, 9), Code::Value);
  CHECK_THROWS_CODE(cache.length(5), Code::Value);
}

// ---------------------------------------------------------------------------------------
// The speculative engine (engine.h) on tiny models: greedy speculative output equals an
// argmax loop over the target's own forward; a sequence's tokens do not depend on the
// batch; caches roll back consistently (the next step's logits equal a fresh forward);
// bad calls throw with codes.

std::vector<int32_t> run_engine(specula::Engine& e, const std::vector<std::vector<int32_t>>& prompts,
                                const specula::SequenceOptions& o, size_t which) {
  std::vector<size_t> slots;
  for (const auto& p : prompts) slots.push_back(e.add(p.data(), p.size(), o));
  size_t guard = 0;
  while (e.step() > 0 && ++guard < 10000) {
  }
  std::vector<int32_t> out(e.tokens(slots[which]).begin() + long(e.prompt_length(slots[which])), e.tokens(slots[which]).end());
  for (size_t s : slots) e.remove(s);
  return out;
}

TEST_CASE(engine_greedy_equals_argmax_decoding_and_is_batch_invariant) {
  const auto tt = make_model(tiny_config(0), WType::F32, 41);
  const auto td = make_model(tiny_config(0), WType::BF16, 42);
  auto target = std::make_shared<const specula::Model>(tt->config, std::vector<std::string>{tt->path}, tt->specs);
  auto draft = std::make_shared<const specula::Model>(td->config, std::vector<std::string>{td->path}, td->specs);
  const size_t V = tt->config.vocab, N = 24;
  const std::vector<int32_t> prompt = {1, 5, 36, 0, 7};
  // Argmax loop: full forward of the growing sequence in a fresh cache each time.
  std::vector<int32_t> seq = prompt, ref;
  for (size_t i = 0; i < N; ++i) {
    specula::KvCache c(target, 1, 64);
    std::vector<float> z(V);
    specula::ForwardItem it{0, seq.data(), seq.size(), 1};
    c.forward(&it, 1, z.data());
    const int32_t best = int32_t(std::max_element(z.begin(), z.end()) - z.begin());
    ref.push_back(best);
    seq.push_back(best);
  }
  specula::Engine e(target, draft, 4, 64);
  specula::SequenceOptions o;
  o.target.temperature = 0;
  o.draft.temperature = 0;
  o.max_new_tokens = N;
  for (size_t gamma : {size_t(0), size_t(1), size_t(3), size_t(7)}) {
    o.gamma = gamma;
    const auto got = run_engine(e, {prompt}, o, 0);
    CHECK(got == ref);
  }
  // Sampled: the same tokens alone and as the third of three sequences.
  o.target.temperature = 1.2;
  o.draft.temperature = 0.8;
  o.target.top_p = 0.9;
  o.gamma = 3;
  o.seed = 99;
  o.max_new_tokens = 30;
  const auto alone = run_engine(e, {prompt}, o, 0);
  const auto inbatch = run_engine(e, {{2, 3}, {4, 4, 4, 4, 4, 4}, prompt}, o, 2);
  CHECK(alone.size() == 30);
  CHECK(alone == inbatch);
  // EOS: a token that greedy decoding emits ends the sequence and is kept last.
  o.target.temperature = 0;
  o.gamma = 3;
  o.eos = {ref[5]};
  const auto stopped = run_engine(e, {prompt}, o, 0);
  const size_t first = size_t(std::find(ref.begin(), ref.end(), ref[5]) - ref.begin());
  CHECK(stopped == std::vector<int32_t>(ref.begin(), ref.begin() + long(first) + 1));
}

TEST_CASE(engine_bad_calls_throw) {
  using specula::Code;
  const auto tt = make_model(tiny_config(0), WType::F32, 43);
  auto target = std::make_shared<const specula::Model>(tt->config, std::vector<std::string>{tt->path}, tt->specs);
  specula::Engine e(target, nullptr, 1, 8);
  specula::SequenceOptions o;
  o.gamma = 0;
  const std::vector<int32_t> p8(8, 1), p2 = {1, 2};
  CHECK_THROWS_CODE(e.add(p8.data(), p8.size(), o), Code::Shape);        // no room in a context of 8
  o.gamma = 2;
  CHECK_THROWS_CODE(e.add(p2.data(), p2.size(), o), Code::Value);        // gamma > 0 without a draft
  o.gamma = 0;
  o.target.temperature = -1;
  CHECK_THROWS_CODE(e.add(p2.data(), p2.size(), o), Code::Value);
  o.target.temperature = 1;
  const std::vector<int32_t> bad = {1, 999};
  CHECK_THROWS_CODE(e.add(bad.data(), bad.size(), o), Code::Value);
  const size_t s = e.add(p2.data(), p2.size(), o);
  CHECK_THROWS_CODE(e.add(p2.data(), p2.size(), o), Code::State);        // all slots in use
  o.max_new_tokens = 100;
  CHECK(e.step() == 1);
  e.remove(s);
  CHECK_THROWS_CODE(e.remove(s), Code::Value);
  CHECK(e.step() == 0);
  CHECK_THROWS_CODE(specula::Engine(target, nullptr, 1, 1000), Code::Value);
}

}  // namespace

CHECK_MAIN()
