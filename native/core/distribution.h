// The sampling distribution of one row of logits, shared by sample(), probabilities(),
// verify() and (later) acceptanceRate(), so that all of them use one definition:
//
//   p = renormalize(min-p(top-p(top-k(softmax(z / T)))))           T > 0
//   p = one-hot at the first index of max(z)                       T = 0
//
// Order: x before y iff z[x] > z[y], or z[x] == z[y] and x < y (that is, by probability,
// ties by lower index). top-k keeps the first k tokens; top-p keeps the shortest prefix
// whose mass is >= topP; min-p keeps tokens with p(x) >= minP * max p. Each filter sees
// the distribution left by the one before.
//
// A Distribution holds unnormalised weights w[x] = e[x] * scale[c], c = x / kChunk,
// where e[x] = exp((z[x] - s_c) / T) relative to a shift s_c (a running maximum of the
// row, see build_distribution) and scale[c] = exp((s_c - M) / T) relative to the row
// maximum M: the token with the row maximum has weight 1 up to rounding. Filtered-out
// tokens have e[x] = 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "params.h"

namespace specula {

constexpr size_t kChunk = 2048;

inline size_t chunk_count(size_t vocab) { return (vocab + kChunk - 1) / kChunk; }

struct Distribution {
  size_t vocab = 0;
  int32_t argmax = -1;    // first index of the largest logit; -1 until needed (find_argmax)
  bool greedy = false;    // temperature 0
  bool weights = false;   // e/scale/csum are filled (always for T > 0)
  float* e = nullptr;     // (V)
  std::vector<double> scale;  // (chunks)
  std::vector<double> csum;   // (chunks) sum of w over each chunk
  double total = 0;           // sum of w

  const float* z = nullptr;   // the logits
  float zmax = 0;             // their maximum
  size_t zmax_chunk = 0;      // the first chunk that holds it

  // The first index of the largest logit (argmax, or found now).
  int32_t find_argmax() const;
  double weight(size_t x) const { return double(e[x]) * scale[x / kChunk]; }
  double prob(size_t x) const {
    if (!weights) return x == size_t(argmax) ? 1.0 : 0.0;
    return weight(x) / total;
  }
};

// Per-thread scratch memory, grown on demand.
struct Workspace {
  std::vector<float> rows[2];        // (V) e of the target / draft row
  std::vector<int32_t> candidates;   // (V) filter candidates
  std::vector<double> resid_csum;    // (chunks) residual mass per chunk
  float* row(int i, size_t vocab);
};
Workspace& workspace();

// Fills d for logits z (V) under params sp, using e (V floats) as storage. For T = 0,
// weights (a one-hot e) are written only if `materialize_greedy`. Returns -1, or the
// index of the first non-finite logit, in which case d is unusable.
int64_t build_distribution(const float* z, size_t vocab, const SamplingParams& sp, float* e,
                           bool materialize_greedy, Distribution& d);

// Index of the first non-finite logit of z (V), or -1: for rows whose distribution is
// not needed but whose validity is checked anyway.
int64_t first_nonfinite(const float* z, size_t vocab);

// Inverse CDF in index order: the smallest x with sum_{y <= x} p(y) > u, u in (0, 1).
// Never returns a token of probability 0.
int32_t sample_distribution(const Distribution& d, double u);

// sum_x min(p(x), q(x)) (= 1 - TVD(p, q)). p and q must both have weights.
double overlap(const Distribution& p, const Distribution& q);

// The residual r = max(0, p - q): per-chunk sums into resid_csum, returns the total.
double residual_sums(const Distribution& p, const Distribution& q, std::vector<double>& resid_csum);

// Inverse CDF of normalize(max(0, p - q)), given residual_sums' outputs.
int32_t sample_residual(const Distribution& p, const Distribution& q,
                        const std::vector<double>& resid_csum, double resid_total, double u);

}  // namespace specula
