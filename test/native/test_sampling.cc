// sample / probabilities / verify against an independent double-precision
// implementation written from the definition (sort, cumulate, normalise), plus the
// hand-checked edge cases of the filters, errors, and thread invariance.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "error.h"
#include "philox.h"
#include "sampling.h"
#include "thread_pool.h"

using specula::SamplingParams;
using specula::ParamsView;

namespace {

// p = renormalize(min-p(top-p(top-k(softmax(z / T))))), straight from the definition.
std::vector<double> naive_probs(const float* z, size_t V, const SamplingParams& sp) {
  std::vector<double> p(V, 0.0);
  std::vector<size_t> order(V);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return z[a] > z[b]; });
  if (sp.temperature == 0) {
    p[order[0]] = 1;
    return p;
  }
  const double zmax = z[order[0]];
  std::vector<double> w(V);
  for (size_t x = 0; x < V; ++x) w[x] = std::exp((double(z[x]) - zmax) / sp.temperature);
  size_t kept = V;
  if (sp.top_k >= 1 && size_t(sp.top_k) < V) kept = size_t(sp.top_k);
  if (sp.top_p < 1) {
    double total = 0;
    for (size_t r = 0; r < kept; ++r) total += w[order[r]];
    double cum = 0;
    for (size_t r = 0; r < kept; ++r) {
      cum += w[order[r]];
      if (cum >= sp.top_p * total) {
        kept = r + 1;
        break;
      }
    }
  }
  double total = 0;
  for (size_t r = 0; r < kept; ++r) {
    const size_t x = order[r];
    if (sp.min_p > 0 && w[x] < sp.min_p) continue;
    p[x] = w[x];
    total += w[x];
  }
  for (double& v : p) v /= total;
  return p;
}

std::vector<float> random_logits(size_t n, float scale, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

std::vector<float> probs(const std::vector<float>& z, size_t rows, size_t V, const SamplingParams& sp) {
  std::vector<float> out(rows * V);
  specula::probabilities(z.data(), rows, V, ParamsView{&sp, 1}, out.data());
  return out;
}

}  // namespace

TEST_CASE(probabilities_match_definition) {
  int cases = 0;
  for (size_t V : {size_t(1), size_t(2), size_t(7), size_t(100), size_t(2048), size_t(2049), size_t(5000)}) {
    for (double T : {0.0, 0.3, 1.0, 2.0}) {
      for (int64_t k : {int64_t(0), int64_t(1), int64_t(5), int64_t(V > 1 ? V - 1 : 0)}) {
        for (double top_p : {1.0, 0.5, 0.9}) {
          for (double min_p : {0.0, 0.05}) {
            const SamplingParams sp{T, k, top_p, min_p};
            const std::vector<float> z = random_logits(V, 3.0f, uint32_t(V * 131 + cases));
            const std::vector<float> got = probs(z, 1, V, sp);
            const std::vector<double> want = naive_probs(z.data(), V, sp);
            double worst = 0, sum = 0;
            bool support = true;
            for (size_t x = 0; x < V; ++x) {
              worst = std::max(worst, std::fabs(double(got[x]) - want[x]));
              // exp underflows to 0 below e^-87 (1.6e-38) in float: such tokens may be either.
              if (want[x] == 0 || want[x] > 1e-37) support &= (got[x] > 0) == (want[x] > 0);
              sum += got[x];
            }
            CHECK_MSG(worst < 2e-6, "V=" + std::to_string(V) + " T=" + std::to_string(T) + " k=" +
                                        std::to_string(k) + " top_p=" + std::to_string(top_p) +
                                        " worst=" + std::to_string(worst));
            CHECK_MSG(support, "support differs, V=" + std::to_string(V));
            CHECK_NEAR(sum, 1.0, 0, 1e-5);
            ++cases;
          }
        }
      }
    }
  }
  std::printf("  %d parameter/vocabulary combinations\n", cases);
}

TEST_CASE(ties_go_to_the_lower_index) {
  const size_t V = 10;
  std::vector<float> z(V, 1.0f);
  z[7] = 2.0f;
  z[8] = 2.0f;
  // Greedy: the first index of the maximum.
  std::vector<float> p = probs(z, 1, V, SamplingParams{0, 0, 1, 0});
  CHECK(p[7] == 1.0f && p[8] == 0.0f);
  // top-k = 3: 7 and 8, then the lowest-index token of the tied rest (0).
  p = probs(z, 1, V, SamplingParams{1, 3, 1, 0});
  CHECK(p[7] > 0 && p[8] > 0 && p[0] > 0 && p[1] == 0);
  CHECK_NEAR(p[0] / p[7], std::exp(-1.0), 1e-6, 0);
  // top-p: shortest prefix with mass >= topP. Mass of {7, 8} = 2e/(2e + 8) = 0.405...
  p = probs(z, 1, V, SamplingParams{1, 0, 0.4, 0});
  CHECK(p[7] > 0 && p[8] > 0 && p[0] == 0);
  p = probs(z, 1, V, SamplingParams{1, 0, 0.41, 0});
  CHECK(p[7] > 0 && p[8] > 0 && p[0] > 0 && p[1] == 0);
  // min-p: keeps p(x) >= minP * max p; e^-1 = 0.3679.
  p = probs(z, 1, V, SamplingParams{1, 0, 1, 0.36});
  CHECK(p[0] > 0 && p[9] > 0);
  p = probs(z, 1, V, SamplingParams{1, 0, 1, 0.37});
  CHECK(p[0] == 0 && p[7] == 0.5f && p[8] == 0.5f);
  // All equal, top-k = 2 keeps indices 0 and 1.
  std::vector<float> flat(V, 0.5f);
  p = probs(flat, 1, V, SamplingParams{1.5, 2, 1, 0});
  CHECK(p[0] == 0.5f && p[1] == 0.5f && p[2] == 0.0f);
}

TEST_CASE(sample_follows_probabilities) {
  const size_t V = 12, N = 200000;
  const std::vector<float> row = random_logits(V, 1.5f, 5);
  const SamplingParams sp{0.8, 8, 0.95, 0.01};
  std::vector<float> z(N * V);
  for (size_t r = 0; r < N; ++r) std::memcpy(&z[r * V], row.data(), V * sizeof(float));
  std::vector<uint64_t> seeds(N), offsets(N);
  for (size_t r = 0; r < N; ++r) {
    seeds[r] = 1000 + r;
    offsets[r] = r % 7;
  }
  std::vector<int32_t> out(N);
  specula::SampleArgs args;
  args.logits = z.data();
  args.rows = N;
  args.vocab = V;
  args.params = ParamsView{&sp, 1};
  args.seeds = seeds.data();
  args.offsets = offsets.data();
  specula::sample(args, out.data());
  const std::vector<double> p = naive_probs(row.data(), V, sp);
  std::vector<double> count(V, 0);
  for (int32_t x : out) count[size_t(x)] += 1;
  double chi2 = 0;
  int dof = -1;
  for (size_t x = 0; x < V; ++x) {
    if (p[x] == 0) {
      CHECK_MSG(count[x] == 0, "sampled a token of probability 0");
      continue;
    }
    const double e = p[x] * N;
    chi2 += (count[x] - e) * (count[x] - e) / e;
    ++dof;
  }
  // 99.9999th percentile of chi-square with <= 11 degrees of freedom is below 50.
  CHECK_MSG(chi2 < 50, "chi2 = " + std::to_string(chi2) + ", dof = " + std::to_string(dof));
}

TEST_CASE(verify_edge_cases) {
  const size_t B = 3, G = 2, V = 50;
  std::vector<float> target(B * (G + 1) * V), draft(B * G * V);
  std::vector<int32_t> tokens(B * G);
  std::mt19937 gen(3);
  std::normal_distribution<float> n01;
  for (float& x : target) x = 2 * n01(gen);
  // Row 0: draft logits identical to the target's, tokens the target's argmax: p == q,
  // every draft accepted, expected acceptance 1.
  // Row 1: disjoint supports (top-k 1 on both with different argmax): rejected at 0 and
  // the residual token is the target's argmax.
  // Row 2: draft length 0: the bonus token only.
  for (size_t i = 0; i < G; ++i) {
    for (size_t x = 0; x < V; ++x) draft[(0 * G + i) * V + x] = target[(0 * (G + 1) + i) * V + x];
    for (size_t x = 0; x < V; ++x) draft[(1 * G + i) * V + x] = -target[(1 * (G + 1) + i) * V + x];
  }
  auto argmax = [&](const float* z) { return int32_t(std::max_element(z, z + V) - z); };
  for (size_t i = 0; i < G; ++i) {
    tokens[0 * G + i] = argmax(&target[(0 * (G + 1) + i) * V]);
    tokens[1 * G + i] = argmax(&draft[(1 * G + i) * V]);
  }
  std::vector<SamplingParams> tp = {{1, 0, 1, 0}, {1, 1, 1, 0}, {0.7, 0, 0.9, 0}};
  std::vector<SamplingParams> dp = {{1, 0, 1, 0}, {1, 1, 1, 0}, {1, 0, 1, 0}};
  std::vector<int32_t> lengths = {2, 2, 0};
  std::vector<uint64_t> seeds = {1, 2, 3};
  std::vector<int32_t> out_tokens(B * (G + 1)), accepted(B), emitted(B);
  std::vector<float> accept_prob(B * G), expected(B * G);
  specula::VerifyArgs a;
  a.target_logits = target.data();
  a.draft_logits = draft.data();
  a.draft_tokens = tokens.data();
  a.draft_lengths = lengths.data();
  a.batch = B;
  a.gamma = G;
  a.vocab = V;
  a.target = ParamsView{tp.data(), B};
  a.draft = ParamsView{dp.data(), B};
  a.seeds = seeds.data();
  specula::VerifyOut o{out_tokens.data(), accepted.data(), emitted.data(), accept_prob.data(), expected.data()};
  specula::verify(a, o);
  CHECK_EQ(accepted[0], 2);
  CHECK_EQ(emitted[0], 3);
  CHECK(accept_prob[0] == 1.0f && accept_prob[1] == 1.0f);
  CHECK_NEAR(expected[0], 1.0, 0, 1e-6);
  CHECK_NEAR(expected[1], 1.0, 0, 1e-6);
  CHECK_EQ(out_tokens[0], tokens[0]);
  CHECK_EQ(out_tokens[1], tokens[1]);
  CHECK(out_tokens[2] >= 0 && out_tokens[2] < int32_t(V));
  CHECK_EQ(accepted[1], 0);
  CHECK(accept_prob[2] == 0.0f && expected[2] == 0.0f);
  CHECK_EQ(out_tokens[3], argmax(&target[(1 * (G + 1) + 0) * V]));
  CHECK_EQ(out_tokens[4], -1);
  CHECK_EQ(accepted[2], 0);
  CHECK_EQ(emitted[2], 1);
  CHECK(std::isnan(accept_prob[4]) && std::isnan(expected[5]));
  CHECK(out_tokens[6] >= 0 && out_tokens[7] == -1 && out_tokens[8] == -1);
  // The bonus token of row 2 is the sample of p_0 with the emit stream.
  const SamplingParams sp = tp[2];
  const std::vector<double> p = naive_probs(&target[(2 * (G + 1)) * V], V, sp);
  const double u = specula::rng::uniform(3, 0, 0, specula::rng::kEmit);
  double cum = 0;
  int32_t want = -1;
  for (size_t x = 0; x < V && want < 0; ++x)
    if ((cum += p[x]) > u) want = int32_t(x);
  CHECK_EQ(out_tokens[6], want);
}

TEST_CASE(errors_are_reported_not_crashes) {
  const size_t V = 8;
  std::vector<float> z(2 * V, 0.5f);
  std::vector<float> out(2 * V);
  const SamplingParams ok{1, 0, 1, 0};
  CHECK_THROWS_CODE(specula::probabilities(z.data(), 2, 0, ParamsView{&ok, 1}, out.data()), specula::Code::Value);
  for (SamplingParams bad : {SamplingParams{-1, 0, 1, 0}, SamplingParams{NAN, 0, 1, 0}, SamplingParams{INFINITY, 0, 1, 0},
                             SamplingParams{1, -2, 1, 0}, SamplingParams{1, 0, 0, 0}, SamplingParams{1, 0, 1.5, 0},
                             SamplingParams{1, 0, 1, 1}, SamplingParams{1, 0, 1, -0.1}})
    CHECK_THROWS_CODE(specula::probabilities(z.data(), 2, V, ParamsView{&bad, 1}, out.data()), specula::Code::Value);
  CHECK_THROWS_CODE(specula::probabilities(z.data(), 2, V, ParamsView{&ok, 3}, out.data()), specula::Code::Shape);
  for (float poison : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> y = z;
    y[V + 3] = poison;
    try {
      specula::probabilities(y.data(), 2, V, ParamsView{&ok, 1}, out.data());
      CHECK_MSG(false, "no exception for a non-finite logit");
    } catch (const specula::Error& e) {
      CHECK(e.code() == specula::Code::Value);
      CHECK_MSG(std::strstr(e.what(), "logits[11] (row 1, token 3)") != nullptr, e.what());
    }
  }
  // verify: token out of range, length out of range.
  std::vector<float> t(1 * 3 * V, 0.f), d(1 * 2 * V, 0.f);
  std::vector<int32_t> tok = {1, int32_t(V)}, len = {2};
  std::vector<uint64_t> seeds = {1};
  std::vector<int32_t> ot(3), acc(1), em(1);
  std::vector<float> ap(2), ex(2);
  specula::VerifyArgs a;
  a.target_logits = t.data();
  a.draft_logits = d.data();
  a.draft_tokens = tok.data();
  a.draft_lengths = len.data();
  a.batch = 1;
  a.gamma = 2;
  a.vocab = V;
  a.target = a.draft = ParamsView{&ok, 1};
  a.seeds = seeds.data();
  specula::VerifyOut o{ot.data(), acc.data(), em.data(), ap.data(), ex.data()};
  CHECK_THROWS_CODE(specula::verify(a, o), specula::Code::Value);
  len[0] = 1;  // the bad token is past the draft length: ignored
  specula::verify(a, o);
  CHECK(acc[0] <= 1 && ot[0] >= 0);
  len[0] = 3;
  CHECK_THROWS_CODE(specula::verify(a, o), specula::Code::Value);
  len[0] = -1;
  CHECK_THROWS_CODE(specula::verify(a, o), specula::Code::Value);
}

TEST_CASE(results_do_not_depend_on_threads_or_batch) {
  const size_t B = 64, G = 4, V = 3000;
  std::vector<float> target(B * (G + 1) * V), draft(B * G * V);
  std::mt19937 gen(17);
  std::normal_distribution<float> n01;
  for (float& x : target) x = 3 * n01(gen);
  for (size_t i = 0; i < draft.size(); ++i) draft[i] = target[(i / (G * V)) * (G + 1) * V + i % (G * V)] + n01(gen);
  std::vector<int32_t> tokens(B * G);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(gen() % V);
  std::vector<uint64_t> seeds(B), offsets(B);
  for (size_t b = 0; b < B; ++b) {
    seeds[b] = 77 * b + 1;
    offsets[b] = b * 3;
  }
  const SamplingParams tp{0.9, 0, 0.95, 0}, dp{1.1, 40, 1, 0.001};
  auto run = [&](size_t first, size_t count, int threads) {
    specula::ThreadPool::global().set_threads(threads);
    std::vector<int32_t> ot(count * (G + 1)), acc(count), em(count);
    std::vector<float> ap(count * G), ex(count * G);
    specula::VerifyArgs a;
    a.target_logits = &target[first * (G + 1) * V];
    a.draft_logits = &draft[first * G * V];
    a.draft_tokens = &tokens[first * G];
    a.batch = count;
    a.gamma = G;
    a.vocab = V;
    a.target = ParamsView{&tp, 1};
    a.draft = ParamsView{&dp, 1};
    a.seeds = &seeds[first];
    a.offsets = &offsets[first];
    specula::verify(a, specula::VerifyOut{ot.data(), acc.data(), em.data(), ap.data(), ex.data()});
    std::vector<uint32_t> bits(ot.begin(), ot.end());
    for (const std::vector<float>* v : {&ap, &ex})
      for (float f : *v) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        bits.push_back(u);
      }
    return std::make_pair(bits, std::vector<int32_t>(acc));
  };
  const int original = specula::ThreadPool::global().threads();
  const auto full1 = run(0, B, 1), full2 = run(0, B, 2);
  CHECK(full1 == full2);
  for (size_t b : {size_t(0), size_t(13), size_t(63)}) {
    const auto alone = run(b, 1, 2);
    CHECK_EQ(alone.second[0], full1.second[b]);
    for (size_t i = 0; i <= G; ++i) CHECK_EQ(alone.first[i], full1.first[b * (G + 1) + i]);
  }
  specula::ThreadPool::global().set_threads(original);
}

CHECK_MAIN()
