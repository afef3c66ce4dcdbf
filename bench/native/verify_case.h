// The inputs of the verify benchmarks (kernels.cc on the CPU, cuda.cc on the GPU), built
// the same way for both: target logits 3 N(0, 1); draft = target + N(0, 1) noise (an
// acceptance rate near 0.7); draft tokens sampled from the draft rows, as the engine
// does, by the caller's sampler (the CPU's or the GPU's sample()).
#pragma once

#include <cstdint>
#include <vector>

#include "bench_util.h"
#include "params.h"
#include "sampling.h"

namespace bench {

struct VerifyCase {
  size_t B, G, V;
  std::vector<float> target, draft;               // (B, G+1, V), (B, G, V)
  std::vector<uint64_t> row_seeds, row_offsets;   // per draft row: the sequence's seed, the position
  std::vector<uint64_t> seeds;                    // per sequence
  std::vector<int32_t> tokens;                    // the drafted tokens (B, G)
  std::vector<int32_t> out_tokens, accepted, emitted;
  std::vector<float> accept_prob, expected;
  specula::SampleArgs sample;  // the B*G draft rows
  specula::VerifyArgs verify;
  specula::VerifyOut out;

  // tp, dp: the target's and the draft's parameters (one each, kept by pointer).
  template <class Sampler>
  VerifyCase(size_t B_, size_t G_, size_t V_, const specula::SamplingParams* tp, const specula::SamplingParams* dp,
             Sampler draw)
      : B(B_), G(G_), V(V_), target(B * (G + 1) * V), draft(B * G * V), row_seeds(B * G), row_offsets(B * G),
        seeds(B), tokens(B * G), out_tokens(B * (G + 1)), accepted(B), emitted(B), accept_prob(B * G),
        expected(B * G) {
    fill_normal(target.data(), target.size(), 3.0f, B * 7 + G * 131 + V);
    fill_normal(draft.data(), draft.size(), 1.0f, B * 11 + G + V * 3);
    for (size_t b = 0; b < B; ++b)
      for (size_t j = 0; j < G * V; ++j) draft[b * G * V + j] += target[b * (G + 1) * V + j];
    for (size_t r = 0; r < B * G; ++r) {
      row_seeds[r] = 1000 + r / G;
      row_offsets[r] = r % G;
    }
    for (size_t b = 0; b < B; ++b) seeds[b] = 1000 + b;
    sample.logits = draft.data();
    sample.rows = B * G;
    sample.vocab = V;
    sample.params = specula::ParamsView{dp, 1};
    sample.seeds = row_seeds.data();
    sample.offsets = row_offsets.data();
    draw(sample, tokens.data());
    verify.target_logits = target.data();
    verify.draft_logits = draft.data();
    verify.draft_tokens = tokens.data();
    verify.batch = B;
    verify.gamma = G;
    verify.vocab = V;
    verify.target = specula::ParamsView{tp, 1};
    verify.draft = specula::ParamsView{dp, 1};
    verify.seeds = seeds.data();
    out = specula::VerifyOut{out_tokens.data(), accepted.data(), emitted.data(), accept_prob.data(), expected.data()};
  }
  VerifyCase(const VerifyCase&) = delete;  // the args point into the vectors
  VerifyCase& operator=(const VerifyCase&) = delete;

  double logit_bytes() const { return 4.0 * double(target.size() + draft.size()); }
  double mean_accepted() const {
    double s = 0;
    for (int32_t a : accepted) s += a;
    return s / double(B);
  }
};

}  // namespace bench
