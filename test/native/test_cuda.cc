// The CUDA backend against the CPU kernels (backend.h). Runs on a machine with a CUDA
// device (the GPU machine: ctest in a -DSPECULA_CUDA=ON build); elsewhere it reports why
// the backend is unavailable and exits 77, which CTest counts as skipped.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "backend.h"
#include "check.h"
#include "error.h"
#include "philox.h"

using namespace specula;

namespace {

std::vector<float> random_logits(size_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> z(n);
  for (auto& v : z) v = d(g);
  return z;
}

// The parameter sets every comparison runs over.
std::vector<SamplingParams> param_sets() {
  return {{1.0, 0, 1.0, 0.0}, {0.7, 0, 1.0, 0.0}, {1.5, 50, 1.0, 0.0}, {1.0, 0, 0.9, 0.0},
          {0.8, 40, 0.8, 0.0}, {1.2, 0, 1.0, 0.05}, {1.0, 100, 0.95, 0.01}, {0.0, 0, 1.0, 0.0}};
}

// u within 1e-6 (relative) of a cumulative boundary of the CPU distribution p between
// the two tokens: the decision may go either way.
bool near_boundary(const float* p, size_t V, int32_t a, int32_t b, double u) {
  const int32_t lo = std::min(a, b);
  double F = 0;
  for (int32_t x = 0; x <= lo; ++x) F += p[x];
  return std::fabs(F - u) <= 1e-6 * std::fmax(u, 1e-12) + 1e-9;
}

// How close (relative) the row's nearest filter decision lies to its boundary: a prefix
// of the sampling order whose mass is top_p of the mass left by top-k, or a weight equal
// to min_p (relative to the argmax's). The CPU's and the GPU's float weights differ in
// rounding, so a decision that close may go either way. Infinity without such filters.
double filter_margin(const float* z, size_t V, const SamplingParams& sp) {
  if (sp.temperature == 0 || (sp.top_p >= 1 && sp.min_p <= 0)) return INFINITY;
  std::vector<int32_t> order(V);
  for (size_t x = 0; x < V; ++x) order[x] = int32_t(x);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  const size_t n = sp.top_k >= 1 && size_t(sp.top_k) < V ? size_t(sp.top_k) : V;
  std::vector<double> w(n);
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += w[i] = std::exp((double(z[order[i]]) - z[order[0]]) / sp.temperature);
  double margin = INFINITY;
  if (sp.min_p > 0)
    for (size_t i = 0; i < n; ++i) margin = std::fmin(margin, std::fabs(w[i] - sp.min_p) / sp.min_p);
  if (sp.top_p < 1) {
    const double target = sp.top_p * total;
    double cum = 0;
    for (size_t i = 0; i < n; ++i) margin = std::fmin(margin, std::fabs((cum += w[i]) - target) / target);
  }
  return margin;
}

TEST_CASE(cuda_sample_and_probabilities_match_the_cpu) {
  for (size_t V : {size_t(1000), size_t(32000), size_t(1003)}) {
    const size_t R = V > 10000 ? 256 : 2048;
    const std::vector<float> z = random_logits(R * V, uint32_t(V), 3.0f);
    for (const SamplingParams& sp : param_sets()) {
      std::vector<uint64_t> seeds(R), offsets(R);
      for (size_t r = 0; r < R; ++r) seeds[r] = 1000 + r, offsets[r] = r % 7;
      SampleArgs a;
      a.logits = z.data();
      a.rows = R;
      a.vocab = V;
      a.params = ParamsView{&sp, 1};
      a.seeds = seeds.data();
      a.offsets = offsets.data();
      std::vector<int32_t> cpu(R), gpu(R);
      sample(a, cpu.data());
      a.device = Device::Cuda;
      sample(a, gpu.data());
      std::vector<float> pc(R * V), pg(R * V);
      probabilities(z.data(), R, V, ParamsView{&sp, 1}, pc.data());
      probabilities(z.data(), R, V, ParamsView{&sp, 1}, pg.data(), Device::Cuda);
      double worst = 0;
      for (size_t i = 0; i < R * V; ++i) worst = std::fmax(worst, std::fabs(double(pc[i]) - pg[i]) / std::fmax(1e-6, pc[i]));
      CHECK_MSG(worst <= 1e-5, "probabilities differ by " + std::to_string(worst) + " relative, V " + std::to_string(V));
      size_t boundary = 0, wrong = 0;
      for (size_t r = 0; r < R; ++r) {
        if (cpu[r] == gpu[r]) continue;
        const double u = rng::uniform(seeds[r], offsets[r], 0, rng::kSample);
        if (near_boundary(pc.data() + r * V, V, cpu[r], gpu[r], u)) ++boundary;
        else ++wrong;
      }
      CHECK_MSG(wrong == 0, std::to_string(wrong) + " rows sample other tokens away from a boundary, V " + std::to_string(V) +
                                ", T " + std::to_string(sp.temperature));
      CHECK_MSG(boundary * 1000 <= R, std::to_string(boundary) + " boundary rows of " + std::to_string(R));
    }
  }
}

TEST_CASE(cuda_verify_matches_the_cpu) {
  const size_t B = 1024, G = 4, V = 2000;
  const std::vector<float> zt = random_logits(B * (G + 1) * V, 7, 2.0f);
  std::vector<float> zd = random_logits(B * G * V, 8, 1.0f);
  for (size_t b = 0; b < B; ++b)
    for (size_t i = 0; i < G; ++i)
      for (size_t x = 0; x < V; ++x) zd[(b * G + i) * V + x] += zt[(b * (G + 1) + i) * V + x];
  std::vector<int32_t> tokens(B * G), lengths(B);
  std::mt19937 g(9);
  for (auto& t : tokens) t = int32_t(g() % 50);  // often likely tokens
  for (size_t b = 0; b < B; ++b) lengths[b] = int32_t(b % (G + 1));
  std::vector<uint64_t> seeds(B), offsets(B);
  for (size_t b = 0; b < B; ++b) seeds[b] = 77 + b, offsets[b] = 3 * b;
  for (const SamplingParams& sp : param_sets()) {
    const SamplingParams dp{sp.temperature == 0 ? 0.0 : sp.temperature * 1.1, sp.top_k, sp.top_p, sp.min_p};
    VerifyArgs a;
    a.target_logits = zt.data();
    a.draft_logits = zd.data();
    a.draft_tokens = tokens.data();
    a.draft_lengths = lengths.data();
    a.batch = B;
    a.gamma = G;
    a.vocab = V;
    a.target = ParamsView{&sp, 1};
    a.draft = ParamsView{&dp, 1};
    a.seeds = seeds.data();
    a.offsets = offsets.data();
    struct Out {
      std::vector<int32_t> tokens, accepted, emitted;
      std::vector<float> prob, expected;
      VerifyOut view() { return VerifyOut{tokens.data(), accepted.data(), emitted.data(), prob.data(), expected.data()}; }
    };
    auto make = [&] { return Out{std::vector<int32_t>(B * (G + 1)), std::vector<int32_t>(B), std::vector<int32_t>(B), std::vector<float>(B * G), std::vector<float>(B * G)}; };
    Out c = make(), d = make();
    verify(a, c.view());
    a.device = Device::Cuda;
    verify(a, d.view());
    size_t differ = 0;
    double worst = 0;
    for (size_t b = 0; b < B; ++b) {
      bool same = c.accepted[b] == d.accepted[b];
      for (size_t i = 0; i <= G; ++i) same = same && c.tokens[b * (G + 1) + i] == d.tokens[b * (G + 1) + i];
      differ += !same;
      for (size_t i = 0; i < size_t(lengths[b]); ++i) {
        worst = std::fmax(worst, std::fabs(double(c.prob[b * G + i]) - d.prob[b * G + i]));
        worst = std::fmax(worst, std::fabs(double(c.expected[b * G + i]) - d.expected[b * G + i]));
      }
      for (size_t i = size_t(lengths[b]); i < G; ++i) CHECK(std::isnan(d.prob[b * G + i]) && std::isnan(d.expected[b * G + i]));
    }
    CHECK_MSG(worst <= 1e-5, "acceptance probabilities differ by " + std::to_string(worst));
    // Decisions within float rounding of a boundary may differ; they must stay rare.
    CHECK_MSG(differ * 1000 <= B, std::to_string(differ) + " of " + std::to_string(B) + " rows differ, T " +
                                      std::to_string(sp.temperature));
  }
}

TEST_CASE(cuda_verify_is_lossless) {
  // The first emitted token of a 2-token draft, over 40,000 seeds, against the target's
  // distribution: chi-square with 7 degrees of freedom, p > 1e-6 (statistic < 40.52).
  const size_t B = 40000, G = 2, V = 8;
  const float t_row[V] = {2.0f, 1.0f, 0.5f, 0.0f, -0.5f, 1.5f, -1.0f, 0.2f};
  const float d_row[V] = {0.5f, 2.0f, 0.0f, 1.0f, -0.5f, 0.5f, 0.0f, -1.0f};
  std::vector<float> zt(B * (G + 1) * V), zd(B * G * V);
  for (size_t r = 0; r < B * (G + 1); ++r)
    for (size_t x = 0; x < V; ++x) zt[r * V + x] = t_row[x];
  for (size_t r = 0; r < B * G; ++r)
    for (size_t x = 0; x < V; ++x) zd[r * V + x] = d_row[x];
  const SamplingParams tp{1.0, 0, 1.0, 0.0}, dp{1.0, 0, 1.0, 0.0};
  std::vector<uint64_t> seeds(B);
  for (size_t b = 0; b < B; ++b) seeds[b] = 5000 + b;
  // Draft tokens drawn from q with the sample stream, as the engine does.
  std::vector<float> q(V);
  probabilities(d_row, 1, V, ParamsView{&dp, 1}, q.data());
  std::vector<int32_t> tokens(B * G);
  for (size_t b = 0; b < B; ++b)
    for (size_t i = 0; i < G; ++i) {
      const double u = rng::uniform(seeds[b], i, 0, rng::kSample);
      double F = 0;
      int32_t x = 0;
      for (; x < int32_t(V) - 1; ++x)
        if ((F += q[x]) > u) break;
      tokens[b * G + i] = x;
    }
  VerifyArgs a;
  a.target_logits = zt.data();
  a.draft_logits = zd.data();
  a.draft_tokens = tokens.data();
  a.batch = B;
  a.gamma = G;
  a.vocab = V;
  a.target = ParamsView{&tp, 1};
  a.draft = ParamsView{&dp, 1};
  a.seeds = seeds.data();
  a.device = Device::Cuda;
  std::vector<int32_t> out(B * (G + 1)), acc(B), em(B);
  std::vector<float> prob(B * G), expd(B * G);
  verify(a, VerifyOut{out.data(), acc.data(), em.data(), prob.data(), expd.data()});
  std::vector<float> p(V);
  probabilities(t_row, 1, V, ParamsView{&tp, 1}, p.data());
  std::vector<double> count(V, 0);
  for (size_t b = 0; b < B; ++b) count[size_t(out[b * (G + 1)])] += 1;
  double chi2 = 0;
  for (size_t x = 0; x < V; ++x) chi2 += (count[x] - B * p[x]) * (count[x] - B * p[x]) / (B * p[x]);
  CHECK_MSG(chi2 < 40.52, "chi-square " + std::to_string(chi2));
}

TEST_CASE(cuda_acceptance_rate_and_kd_match_the_cpu) {
  const size_t R = 64, V = 50000;
  const std::vector<float> zt = random_logits(R * V, 11, 3.0f);
  std::vector<float> zs = random_logits(R * V, 12, 0.5f);
  for (size_t i = 0; i < R * V; ++i) zs[i] += zt[i];
  // A row whose filters keep different sets on the two devices (a decision within 1e-5
  // relative of its boundary, filter_margin) differs by the mass of the tokens in
  // question; such rows must stay rare (<= 1%), every other row agrees to 1e-5.
  size_t differ = 0, compared = 0;
  for (const SamplingParams& sp : param_sets()) {
    std::vector<float> c(R), g(R);
    acceptance_rate(zt.data(), zs.data(), R, V, ParamsView{&sp, 1}, ParamsView{&sp, 1}, c.data());
    acceptance_rate(zt.data(), zs.data(), R, V, ParamsView{&sp, 1}, ParamsView{&sp, 1}, g.data(), Device::Cuda);
    for (size_t r = 0; r < R; ++r, ++compared) {
      if (std::fabs(double(c[r]) - g[r]) <= 1e-5 * std::fabs(c[r]) + 1e-6) continue;
      ++differ;
      const double margin =
          std::fmin(filter_margin(zt.data() + r * V, V, sp), filter_margin(zs.data() + r * V, V, sp));
      std::printf("  acceptance rate of row %zu (T %g, top-k %lld, top-p %g, min-p %g): cpu %.7f, cuda %.7f, "
                  "nearest filter decision %.2e relative from its boundary\n",
                  r, sp.temperature, (long long)sp.top_k, sp.top_p, sp.min_p, c[r], g[r], margin);
      CHECK_MSG(margin <= 1e-5, "the acceptance rates differ away from a filter boundary");
    }
  }
  CHECK_MSG(differ * 100 <= compared, std::to_string(differ) + " of " + std::to_string(compared) + " rows differ");
  std::vector<uint8_t> mask(R, 1);
  mask[3] = 0;
  for (int d = 0; d < 4; ++d)
    for (double T : {0.5, 1.0, 2.0}) {
      KdArgs a;
      a.teacher = zt.data();
      a.student = zs.data();
      a.rows = R;
      a.vocab = V;
      a.divergence = Divergence(d);
      a.temperature = T;
      a.beta = 0.3;
      a.mask = mask.data();
      a.scale_t2 = true;
      std::vector<float> rc(R), rg(R), gc(R * V), gg(R * V);
      const double lc = kd_loss(a, rc.data(), gc.data());
      a.device = Device::Cuda;
      const double lg = kd_loss(a, rg.data(), gg.data());
      CHECK_NEAR(lc, lg, 1e-5, 0);
      for (size_t r = 0; r < R; ++r) CHECK_NEAR(rc[r], rg[r], 1e-5, 1e-12);
      double worst = 0;
      for (size_t i = 0; i < R * V; ++i)
        if (std::fabs(gc[i]) > 1e-6) worst = std::fmax(worst, std::fabs(double(gc[i]) - gg[i]) / std::fabs(gc[i]));
      CHECK_MSG(worst <= 1e-4, "gradient differs by " + std::to_string(worst) + " relative, divergence " +
                                   std::to_string(d) + ", T " + std::to_string(T));
    }
}

TEST_CASE(cuda_reports_nonfinite_logits_as_the_cpu_does) {
  const size_t R = 4, V = 3000;
  std::vector<float> z = random_logits(R * V, 3, 1.0f);
  z[2 * V + 17] = NAN;
  const SamplingParams sp{1.0, 0, 1.0, 0.0};
  std::vector<uint64_t> seeds(R, 1);
  SampleArgs a;
  a.logits = z.data();
  a.rows = R;
  a.vocab = V;
  a.params = ParamsView{&sp, 1};
  a.seeds = seeds.data();
  a.device = Device::Cuda;
  std::vector<int32_t> out(R);
  std::string message;
  try {
    sample(a, out.data());
  } catch (const Error& e) {
    CHECK(e.code() == Code::Value);
    message = e.what();
  }
  CHECK_EQ(message, std::string("logits[6017] (row 2, token 17): expected a finite logit, received NaN"));
}

}  // namespace

int main() {
  const BackendStatus s = cuda_status();
  if (!s.available) {
    std::printf("test_cuda: skipped, the CUDA backend is unavailable: %s\n", s.reason.c_str());
    return 77;
  }
  std::printf("test_cuda: %s\n", s.device.c_str());
  int failed = 0;
  for (const auto& c : check::cases()) {
    const int before = check::failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      check::fail(__FILE__, __LINE__, std::string(c.name) + " threw: " + e.what());
    }
    const bool ok = check::failures() == before;
    failed += !ok;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", c.name);
  }
  std::printf("%s\n", failed ? "FAILED" : "all passed");
  return failed ? 1 : 0;
}
