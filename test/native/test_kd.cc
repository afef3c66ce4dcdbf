// KD losses and gradients against a naive double-precision implementation written
// from the definitions, across divergences, temperatures, beta and vocabulary sizes;
// plus acceptance_rate = 1 - TVD without filters, and the error cases.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "error.h"
#include "kd.h"

using specula::Divergence;

namespace {

const char* name(Divergence d) {
  switch (d) {
    case Divergence::FKL: return "fkl";
    case Divergence::RKL: return "rkl";
    case Divergence::JSD: return "jsd";
    case Divergence::TVD: return "tvd";
  }
  return "?";
}

// One row, in double: the divergence and its gradient (1/T included).
double naive_row(const float* zt, const float* zs, size_t V, Divergence div, double T, double beta,
                 std::vector<double>& grad) {
  std::vector<double> lp(V), lq(V), p(V), q(V);
  auto logsoftmax = [&](const float* z, std::vector<double>& l) {
    double m = -1e300;
    for (size_t x = 0; x < V; ++x) m = std::max(m, double(z[x]) / T);
    double s = 0;
    for (size_t x = 0; x < V; ++x) s += std::exp(double(z[x]) / T - m);
    for (size_t x = 0; x < V; ++x) l[x] = double(z[x]) / T - m - std::log(s);
  };
  logsoftmax(zt, lp);
  logsoftmax(zs, lq);
  for (size_t x = 0; x < V; ++x) {
    p[x] = std::exp(lp[x]);
    q[x] = std::exp(lq[x]);
  }
  grad.assign(V, 0.0);
  double L = 0;
  if (div == Divergence::FKL) {
    for (size_t x = 0; x < V; ++x) L += p[x] * (lp[x] - lq[x]);
    for (size_t x = 0; x < V; ++x) grad[x] = (q[x] - p[x]) / T;
  } else if (div == Divergence::RKL) {
    for (size_t x = 0; x < V; ++x) L += q[x] * (lq[x] - lp[x]);
    for (size_t x = 0; x < V; ++x) grad[x] = q[x] * (lq[x] - lp[x] - L) / T;
  } else if (div == Divergence::JSD) {
    double kqm = 0, kpm = 0;
    std::vector<double> h(V);
    for (size_t x = 0; x < V; ++x) {
      const double lm = std::log(beta * p[x] + (1 - beta) * q[x]);
      h[x] = lq[x] - lm;
      kqm += q[x] * h[x];
      kpm += p[x] * (lp[x] - lm);
    }
    L = beta * kpm + (1 - beta) * kqm;
    for (size_t x = 0; x < V; ++x) grad[x] = (1 - beta) * q[x] * (h[x] - kqm) / T;
  } else {
    double G = 0;
    for (size_t x = 0; x < V; ++x) {
      L += 0.5 * std::fabs(p[x] - q[x]);
      G += 0.5 * q[x] * ((q[x] > p[x]) - (q[x] < p[x]));
    }
    for (size_t x = 0; x < V; ++x) grad[x] = q[x] * (0.5 * ((q[x] > p[x]) - (q[x] < p[x])) - G) / T;
  }
  return L;
}

specula::KdArgs kd_args(const std::vector<float>& zt, const std::vector<float>& zs, size_t R, size_t V, Divergence div,
                        double T, double beta = 0.5) {
  specula::KdArgs a;
  a.teacher = zt.data();
  a.student = zs.data();
  a.rows = R;
  a.vocab = V;
  a.divergence = div;
  a.temperature = T;
  a.beta = beta;
  return a;
}

// One row's gradient (the kernel's, of the mean over R rows) against the reference's g / R,
// on the entries above 1e-6: raises *worst to its worst relative error; returns the first
// entry off by more than 1e-4 ("" if none).
std::string grad_row_off(const float* grad, const std::vector<double>& g, size_t R, double* worst) {
  std::string first;
  for (size_t x = 0; x < g.size(); ++x) {
    const double want = g[x] / R;
    if (std::fabs(want) <= 1e-6) continue;
    const double e = std::fabs(grad[x] - want) / std::fabs(want);
    *worst = std::max(*worst, e);
    if (e > 1e-4 && first.empty())
      first = " token " + std::to_string(x) + ": " + std::to_string(grad[x]) + " vs " + std::to_string(want);
  }
  return first;
}

}  // namespace

TEST_CASE(kd_matches_double_reference) {
  const Divergence divs[] = {Divergence::FKL, Divergence::RKL, Divergence::JSD, Divergence::TVD};
  double worst_loss = 0, worst_grad = 0;
  std::mt19937 gen(11);
  std::normal_distribution<float> n01;
  // SPECULA_QUICK=1 (the emulated-CPU runs of native/tools/check-old-cpus.mjs) skips V = 50,000.
  const bool quick = std::getenv("SPECULA_QUICK") != nullptr;
  for (size_t V : {size_t(7), size_t(1000), size_t(5000), size_t(50000)}) {
    if (quick && V > 5000) continue;
    for (double T : {0.25, 0.5, 1.0, 2.0, 4.0}) {
      for (Divergence div : divs) {
        for (double beta : (div == Divergence::JSD ? std::vector<double>{0.1, 0.5, 0.9} : std::vector<double>{0.5})) {
          const size_t R = 6;
          std::vector<float> zt(R * V), zs(R * V);
          for (size_t r = 0; r < R; ++r) {
            const float scale = r % 2 ? 1.0f : 3.0f;
            for (size_t x = 0; x < V; ++x) {
              zt[r * V + x] = scale * n01(gen);
              // near copies, noisy copies and independent rows
              zs[r * V + x] = r < 2 ? zt[r * V + x] + 0.1f * n01(gen) : r < 4 ? zt[r * V + x] + n01(gen) : scale * n01(gen);
            }
          }
          const specula::KdArgs a = kd_args(zt, zs, R, V, div, T, beta);
          std::vector<float> per_row(R), grad(R * V);
          const double loss = specula::kd_loss(a, per_row.data(), grad.data());
          double mean = 0;
          for (size_t r = 0; r < R; ++r) {
            std::vector<double> g;
            const double L = naive_row(&zt[r * V], &zs[r * V], V, div, T, beta, g);
            mean += L / R;
            const double e = std::fabs(per_row[r] - L) / L;
            worst_loss = std::max(worst_loss, e);
            CHECK_MSG(e <= 1e-5, std::string(name(div)) + " V=" + std::to_string(V) + " T=" + std::to_string(T) +
                                     " row " + std::to_string(r) + " loss " + std::to_string(per_row[r]) + " vs " +
                                     std::to_string(L));
            const std::string off = grad_row_off(&grad[r * V], g, R, &worst_grad);
            CHECK_MSG(off.empty(), std::string(name(div)) + " V=" + std::to_string(V) + " T=" + std::to_string(T) +
                                       " beta=" + std::to_string(beta) + " row " + std::to_string(r) + off);
          }
          CHECK_NEAR(loss, mean, 1e-5, 0);
        }
      }
    }
  }
  std::printf("  worst relative error: loss %.2e, gradient entries > 1e-6 %.2e\n", worst_loss, worst_grad);
}

// JSD's loss terms come from a table fitted per beta (simd.h JsdTable): betas near 0 and 1,
// and log-ratios |r| from ~1e-3 through every piece (1.5 wide) to beyond its span of 24.
TEST_CASE(kd_jsd_any_beta) {
  const size_t V = 4000, R = 4;
  std::mt19937 gen(31);
  std::normal_distribution<float> n01;
  std::vector<float> zt(R * V), zs(R * V);
  const float noise[R] = {0.002f, 0.3f, 4.0f, 12.0f};  // row 3: |r| up to ~50
  for (size_t r = 0; r < R; ++r)
    for (size_t x = 0; x < V; ++x) {
      zt[r * V + x] = 2.0f * n01(gen);
      zs[r * V + x] = zt[r * V + x] + noise[r] * n01(gen);
    }
  double worst = 0, worst_grad = 0;
  for (double beta : {1e-3, 0.02, 0.3, 0.77, 0.98, 0.999}) {
    const specula::KdArgs a = kd_args(zt, zs, R, V, Divergence::JSD, 1.0, beta);
    std::vector<float> per_row(R), grad(R * V);
    specula::kd_loss(a, per_row.data(), grad.data());
    for (size_t r = 0; r < R; ++r) {
      std::vector<double> g;
      const double L = naive_row(&zt[r * V], &zs[r * V], V, Divergence::JSD, 1.0, beta, g);
      const double e = std::fabs(per_row[r] - L) / L;
      worst = std::max(worst, e);
      CHECK_MSG(e <= 1e-5, "beta=" + std::to_string(beta) + " row " + std::to_string(r) + " loss " +
                               std::to_string(per_row[r]) + " vs " + std::to_string(L));
      const std::string off = grad_row_off(&grad[r * V], g, R, &worst_grad);
      CHECK_MSG(off.empty(), "beta=" + std::to_string(beta) + " row " + std::to_string(r) + off);
    }
  }
  std::printf("  worst relative error: loss %.2e, gradient entries > 1e-6 %.2e\n", worst, worst_grad);
}

// Rows too long for a core's L2 beside their exponentials: rkl's gradient sweep recomputes
// the exponentials from the logits (kd.cc) instead of reading back pass 1's.
TEST_CASE(kd_long_rows_gradient) {
  if (std::getenv("SPECULA_QUICK") != nullptr) return;
  const size_t V = 131072, R = 4;
  std::mt19937 gen(23);
  std::normal_distribution<float> n01;
  std::vector<float> zt(R * V), zs(R * V);
  for (size_t r = 0; r < R; ++r)
    for (size_t x = 0; x < V; ++x) {
      zt[r * V + x] = 3.0f * n01(gen) + (r == 3 ? 40.0f : 0.0f);  // row 3: a large offset
      zs[r * V + x] = r == 0 ? zt[r * V + x] + 0.1f * n01(gen) : r == 2 ? 3.0f * n01(gen) : zt[r * V + x] + n01(gen);
    }
  double worst = 0;
  for (Divergence div : {Divergence::RKL, Divergence::FKL}) {
    for (double T : {0.5, 1.0, 2.0}) {
      const specula::KdArgs a = kd_args(zt, zs, R, V, div, T);
      std::vector<float> per_row(R), grad(R * V);
      specula::kd_loss(a, per_row.data(), grad.data());
      for (size_t r = 0; r < R; ++r) {
        std::vector<double> g;
        const double L = naive_row(&zt[r * V], &zs[r * V], V, div, T, 0.5, g);
        CHECK_MSG(std::fabs(per_row[r] - L) <= 1e-5 * L, std::string(name(div)) + " row " + std::to_string(r));
        const std::string off = grad_row_off(&grad[r * V], g, R, &worst);
        CHECK_MSG(off.empty(), std::string(name(div)) + " T=" + std::to_string(T) + " row " + std::to_string(r) + off);
      }
    }
  }
  std::printf("  worst relative error of gradient entries > 1e-6: %.2e\n", worst);
}

TEST_CASE(acceptance_rate_is_one_minus_tvd_without_filters) {
  const size_t R = 5, V = 3000;
  std::mt19937 gen(5);
  std::normal_distribution<float> n01;
  std::vector<float> zt(R * V), zd(R * V);
  for (size_t i = 0; i < R * V; ++i) {
    zt[i] = 2 * n01(gen);
    zd[i] = zt[i] + n01(gen);
  }
  for (double T : {0.5, 1.0, 2.0}) {
    specula::SamplingParams sp{T, 0, 1, 0};
    std::vector<float> acc(R), per_row(R);
    specula::acceptance_rate(zt.data(), zd.data(), R, V, specula::ParamsView{&sp, 1}, specula::ParamsView{&sp, 1}, acc.data());
    const specula::KdArgs a = kd_args(zt, zd, R, V, Divergence::TVD, T);
    specula::kd_loss(a, per_row.data(), nullptr);
    for (size_t r = 0; r < R; ++r) CHECK_NEAR(acc[r], 1.0 - per_row[r], 0, 2e-6);
  }
}

TEST_CASE(kd_errors_and_mask) {
  std::vector<float> zt(12, 0.5f), zs(12, 0.25f), per_row(3), grad(12, 7.0f);
  specula::KdArgs a;
  a.teacher = zt.data();
  a.student = zs.data();
  a.rows = 3;
  a.vocab = 4;
  for (double T : {0.0, -1.0, double(NAN), double(INFINITY)}) {
    a.temperature = T;
    CHECK_THROWS_CODE(specula::kd_loss(a, per_row.data(), nullptr), specula::Code::Value);
  }
  a.temperature = 1;
  a.divergence = Divergence::JSD;
  for (double beta : {0.0, 1.0, -0.5, double(NAN)}) {
    a.beta = beta;
    CHECK_THROWS_CODE(specula::kd_loss(a, per_row.data(), nullptr), specula::Code::Value);
  }
  a.beta = 0.5;
  zs[6] = NAN;
  CHECK_THROWS_CODE(specula::kd_loss(a, per_row.data(), nullptr), specula::Code::Value);
  // Excluded rows are not read: the NaN in row 1 is ignored, its gradient is zero.
  const uint8_t mask[3] = {1, 0, 1};
  a.mask = mask;
  specula::kd_loss(a, per_row.data(), grad.data());
  CHECK(per_row[1] == 0.0f);
  for (int x = 4; x < 8; ++x) CHECK(grad[x] == 0.0f);
  const uint8_t none[3] = {0, 0, 0};
  a.mask = none;
  CHECK(specula::kd_loss(a, per_row.data(), grad.data()) == 0.0);
}

CHECK_MAIN()
