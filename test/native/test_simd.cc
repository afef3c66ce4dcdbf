// The leaf kernels of every instruction-set level this CPU has: accuracy against double
// precision, non-finite detection, tails, and bitwise agreement of AVX2 and AVX-512.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "simd.h"

using specula::simd::Kernels;
using specula::simd::kernels_for;

namespace {

std::vector<const Kernels*> levels() {
  std::vector<const Kernels*> out;
  for (const char* name : {"avx512", "avx2", "portable"})
    if (const Kernels* k = kernels_for(name)) out.push_back(k);
  return out;
}

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

const size_t kLengths[] = {1, 2, 15, 16, 17, 31, 33, 100, 2047, 2048};

}  // namespace

TEST_CASE(portable_level_always_exists) {
  CHECK(kernels_for("portable") != nullptr);
  CHECK(kernels_for("no-such-level") == nullptr);
  std::printf("levels on this CPU:");
  for (const Kernels* k : levels()) std::printf(" %s", k->name);
  std::printf("; chosen: %s\n", specula::simd::kernels().name);
}

TEST_CASE(exp_accuracy) {
  for (const Kernels* k : levels()) {
    const size_t n = 100000;
    std::vector<float> x(n), out(n);
    for (size_t i = 0; i < n; ++i) x[i] = -87.0f * float(i) / float(n - 1);  // [-87, 0]
    // Callers pass at most one chunk (2048 floats: 128 per lane) per call.
    double worst = 0;
    for (size_t off = 0; off < n; off += 2048) {
      const size_t len = n - off < 2048 ? n - off : 2048;
      const float s = k->exp_sum(x.data() + off, len, 0.0f, 1.0f, out.data() + off);
      double sum = 0;
      for (size_t i = off; i < off + len; ++i) {
        const double ref = std::exp(double(x[i]));
        worst = std::fmax(worst, std::fabs(out[i] - ref) / ref);
        sum += out[i];
      }
      CHECK_NEAR(s, sum, 1e-6, 0);
    }
    CHECK_MSG(worst < 6e-6, std::string(k->name) + " worst relative error " + std::to_string(worst));
    std::printf("  %s: exp worst relative error on [-87, 0]: %.3g\n", k->name, worst);
    // Where the probability mass is (within 16 nats of the maximum): 2.2e-7 + 6e-8 |t|.
    std::vector<float> near(4096), en(4096);
    for (size_t i = 0; i < near.size(); ++i) near[i] = -16.0f * float(i) / 4095.0f;
    double worst_near = 0;
    for (size_t off = 0; off < near.size(); off += 2048) k->exp_sum(near.data() + off, 2048, 0.0f, 1.0f, en.data() + off);
    for (size_t i = 0; i < near.size(); ++i) {
      const double ref = std::exp(double(near[i]));
      const double bound = 2.2e-7 + 6e-8 * std::fabs(near[i]) * 1.4427;
      CHECK_MSG(std::fabs(en[i] - ref) / ref <= bound, std::to_string(near[i]));
      worst_near = std::fmax(worst_near, std::fabs(en[i] - ref) / ref);
    }
    std::printf("  %s: exp worst relative error on [-16, 0]: %.3g\n", k->name, worst_near);
    // Below kExpMin the result is exactly 0; -inf too.
    const float tiny[3] = {-87.5f, -1000.0f, -std::numeric_limits<float>::infinity()};
    float t[3];
    CHECK(k->exp_sum(tiny, 3, 0.0f, 1.0f, t) == 0.0f);
    CHECK(t[0] == 0.0f && t[1] == 0.0f && t[2] == 0.0f);
  }
}

TEST_CASE(max_detects_nonfinite) {
  for (const Kernels* k : levels()) {
    for (size_t n : kLengths) {
      std::vector<float> x = random_floats(n, -5, 5, uint32_t(n));
      bool bad = false;
      float ref = x[0];
      for (float v : x) ref = v > ref ? v : ref;
      CHECK(k->max(x.data(), n, &bad) == ref);
      CHECK(!bad);
      for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity()}) {
        for (size_t at : {size_t(0), n / 2, n - 1}) {
          std::vector<float> y = x;
          y[at] = poison;
          bad = false;
          k->max(y.data(), n, &bad);
          CHECK_MSG(bad, std::string(k->name) + " n=" + std::to_string(n) + " at=" + std::to_string(at));
        }
      }
    }
  }
}

TEST_CASE(sums_match_double) {
  for (const Kernels* k : levels()) {
    for (size_t n : kLengths) {
      const std::vector<float> p = random_floats(n, 0, 1, 7 + uint32_t(n)), q = random_floats(n, 0, 1, 9 + uint32_t(n));
      double s = 0, mn = 0, rs = 0;
      for (size_t i = 0; i < n; ++i) {
        s += p[i];
        const double a = double(float(p[i] * 0.7f)), b = double(float(q[i] * 1.3f));
        mn += std::fmin(a, b);
        rs += std::fmax(0.0, a - b);
      }
      CHECK_NEAR(k->sum(p.data(), n), s, 2e-6, 0);
      CHECK_NEAR(k->read(p.data(), n), s, 2e-6, 0);
      CHECK_NEAR(k->min_sum(p.data(), q.data(), n, 0.7f, 1.3f), mn, 2e-6, 1e-12);
      CHECK_NEAR(k->resid_sum(p.data(), q.data(), n, 0.7f, 1.3f), rs, 2e-6, 1e-12);
      std::vector<float> y = p;
      k->scale(y.data(), n, 3.0f);
      for (size_t i = 0; i < n; ++i) CHECK(y[i] == p[i] * 3.0f);
    }
  }
}

TEST_CASE(avx2_and_avx512_agree_bitwise) {
  const Kernels* a = kernels_for("avx512");
  const Kernels* b = kernels_for("avx2");
  if (!a || !b) {
    std::printf("  (skipped: this CPU lacks AVX-512 or AVX2)\n");
    return;
  }
  for (size_t n : kLengths) {
    const std::vector<float> x = random_floats(n, -30, 30, 11 + uint32_t(n));
    const std::vector<float> q = random_floats(n, 0, 1, 13 + uint32_t(n));
    bool bad = false;
    CHECK(same_bits(a->max(x.data(), n, &bad), b->max(x.data(), n, &bad)));
    const float m = a->max(x.data(), n, &bad);
    std::vector<float> oa(n), ob(n);
    CHECK(same_bits(a->exp_sum(x.data(), n, m, 0.37f, oa.data()), b->exp_sum(x.data(), n, m, 0.37f, ob.data())));
    for (size_t i = 0; i < n; ++i) CHECK(same_bits(oa[i], ob[i]));
    CHECK(same_bits(a->min_sum(oa.data(), q.data(), n, 0.3f, 0.9f), b->min_sum(oa.data(), q.data(), n, 0.3f, 0.9f)));
    CHECK(same_bits(a->resid_sum(oa.data(), q.data(), n, 0.3f, 0.9f), b->resid_sum(oa.data(), q.data(), n, 0.3f, 0.9f)));
    CHECK(same_bits(a->sum(oa.data(), n), b->sum(oa.data(), n)));
  }
}

CHECK_MAIN()
