// The sampling kernels: sample, probabilities and verify (temperature-scaled
// speculative verification). Semantics: distribution.h (the distribution of a row),
// philox.h (randomness). Dimension letters: R rows, V vocabulary, B batch, G gamma.
// All three are multi-threaded over rows on ThreadPool::global(); every row's result
// depends only on that row's inputs (batch and thread invariant).
#pragma once

#include <cstddef>
#include <cstdint>

#include "params.h"

namespace specula {

struct SampleArgs {
  const float* logits = nullptr;     // (R, V)
  size_t rows = 0, vocab = 0;
  ParamsView params;                 // 1 or R
  const uint64_t* seeds = nullptr;   // (R)
  const uint64_t* offsets = nullptr; // (R) position counters, nullptr = all 0
  Device device = Device::Cpu;       // backend.h
};

// out (R): x ~ p_row with u = uniform(seed, offset, 0, sample).
void sample(const SampleArgs& args, int32_t* out);

// out (R, V): the distribution that sample() draws from.
void probabilities(const float* logits, size_t rows, size_t vocab, ParamsView params, float* out,
                   Device device = Device::Cpu);

struct VerifyArgs {
  const float* target_logits = nullptr;  // (B, G+1, V)
  const float* draft_logits = nullptr;   // (B, G, V)
  const int32_t* draft_tokens = nullptr; // (B, G)
  const int32_t* draft_lengths = nullptr;// (B) each in 0..G; nullptr = all G
  size_t batch = 0, gamma = 0, vocab = 0;
  ParamsView target, draft;              // 1 or B each
  const uint64_t* seeds = nullptr;       // (B)
  const uint64_t* offsets = nullptr;     // (B) position of each row's first drafted token; nullptr = 0
  Device device = Device::Cpu;           // backend.h
};

struct VerifyOut {
  int32_t* tokens = nullptr;       // (B, G+1) emitted tokens, -1 padded
  int32_t* accepted = nullptr;     // (B)
  int32_t* emitted = nullptr;      // (B) accepted + 1
  float* accept_prob = nullptr;    // (B, G) min(1, p(x)/q(x)); NaN past draft_lengths
  float* expected = nullptr;       // (B, G) sum_x min(p(x), q(x)); NaN past draft_lengths
};

// For each row b with L = draft_lengths[b] and pos_i = offsets[b] + i:
//   accept x_i (i < L) while uniform(seed, pos_i, 0, accept) < p_i(x_i) / q_i(x_i);
//   at the first rejection n emit from normalize(max(0, p_n - q_n)) (from p_n if that
//   mass is <= 1e-12); if all L are accepted emit the bonus token from p_L; both with
//   uniform(seed, pos_n, 0, emit). q(x) = 0 counts as ratio 1 if p(x) > 0, else 0.
// Logit rows 0..L of the target and 0..L-1 of the draft must be finite (E_VALUE).
void verify(const VerifyArgs& args, const VerifyOut& out);

// Bandwidth baseline: reads every float of the arrays once, on the pool's threads.
double read_pass(const float* const* arrays, const size_t* lengths, size_t count);

}  // namespace specula
