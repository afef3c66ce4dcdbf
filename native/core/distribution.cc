#include "distribution.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "simd.h"

namespace specula {

float* Workspace::row(int i, size_t vocab) {
  if (rows[i].size() < vocab) rows[i].resize(vocab);
  return rows[i].data();
}

Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

namespace {

// Buckets of (M - z) / T, half a nat wide: monotone in z, so every token of a lower
// bucket comes after every token of a higher one in the sampling order.
constexpr int kBuckets = 64;
inline int bucket_of(float z, float zmax, float inv_t) {
  const float d = (zmax - z) * inv_t;
  return d < 0.5f * (kBuckets - 1) ? int(d * 2.0f) : kBuckets - 1;
}

// x before y in the sampling order.
struct Before {
  const float* z;
  bool operator()(int32_t x, int32_t y) const { return z[x] > z[y] || (z[x] == z[y] && x < y); }
};

void recompute_sums(Distribution& d) {
  const simd::Kernels& k = simd::kernels();
  d.total = 0;
  for (size_t c = 0, n = d.csum.size(); c < n; ++c) {
    const size_t off = c * kChunk, len = std::min(kChunk, d.vocab - off);
    d.csum[c] = d.scale[c] * double(k.sum(d.e + off, len));
    d.total += d.csum[c];
  }
}

// top-k: keeps the first k tokens in the sampling order.
void apply_top_k(const float* z, float zmax, float inv_t, size_t k, Distribution& d,
                 std::vector<int32_t>& cand) {
  const size_t V = d.vocab;
  size_t count[kBuckets] = {};
  for (size_t x = 0; x < V; ++x) ++count[bucket_of(z[x], zmax, inv_t)];
  int last = 0;
  for (size_t acc = 0; last < kBuckets; ++last)
    if ((acc += count[last]) >= k) break;
  cand.clear();
  for (size_t x = 0; x < V; ++x)
    if (bucket_of(z[x], zmax, inv_t) <= last) cand.push_back(int32_t(x));
  const Before before{z};
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), before);
  const int32_t t = cand[k - 1];
  for (size_t x = 0; x < V; ++x)
    if (before(t, int32_t(x))) d.e[x] = 0.0f;
}

// Shortest prefix (in sampling order) of cand[0..n) whose weight is >= target:
// returns its last element. Weighted quickselect, expected O(n).
int32_t select_by_mass(int32_t* cand, size_t n, const Distribution& d, const float* z,
                       double target) {
  const Before before{z};
  size_t lo = 0, hi = n;
  double base = 0;  // weight of the elements known to come before cand[lo..hi)
  uint64_t state = 0x9E3779B97F4A7C15ull ^ n;
  while (hi - lo > 1) {
    // Pivot: median of three pseudo-random picks (deterministic).
    auto pick = [&] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return lo + size_t((state >> 33) % (hi - lo));
    };
    size_t a = pick(), b = pick(), c = pick();
    if (before(cand[b], cand[a])) std::swap(a, b);
    if (before(cand[c], cand[b])) std::swap(b, c);
    if (before(cand[b], cand[a])) std::swap(a, b);
    std::swap(cand[b], cand[hi - 1]);
    const int32_t pivot = cand[hi - 1];
    size_t store = lo;
    double mass = 0;
    for (size_t i = lo; i + 1 < hi; ++i) {
      if (before(cand[i], pivot)) {
        mass += d.weight(size_t(cand[i]));
        std::swap(cand[i], cand[store++]);
      }
    }
    std::swap(cand[store], cand[hi - 1]);  // pivot at `store`
    if (base + mass >= target && store > lo) {
      hi = store;
    } else {
      base += mass + d.weight(size_t(pivot));
      if (base >= target || store + 1 == hi) return pivot;
      lo = store + 1;
    }
  }
  return cand[lo];
}

// top-p: keeps the shortest prefix whose mass is >= top_p (of the weights left by top-k).
void apply_top_p(const float* z, float zmax, float inv_t, double top_p, Distribution& d,
                 std::vector<int32_t>& cand) {
  const size_t V = d.vocab;
  const double target = top_p * d.total;
  double mass[kBuckets] = {};
  for (size_t x = 0; x < V; ++x)
    if (d.e[x] > 0) mass[bucket_of(z[x], zmax, inv_t)] += d.weight(x);
  int last = kBuckets - 1;
  double acc = 0;
  for (int b = 0; b < kBuckets; ++b)
    if ((acc += mass[b]) >= target) {
      last = b;
      break;
    }
  cand.clear();
  for (size_t x = 0; x < V; ++x)
    if (d.e[x] > 0 && bucket_of(z[x], zmax, inv_t) <= last) cand.push_back(int32_t(x));
  const int32_t t = select_by_mass(cand.data(), cand.size(), d, z, target);
  const Before before{z};
  for (size_t x = 0; x < V; ++x)
    if (before(t, int32_t(x))) d.e[x] = 0.0f;
}

// min-p: keeps tokens with w(x) >= min_p (the top token has w = 1).
void apply_min_p(double min_p, Distribution& d) {
  for (size_t x = 0; x < d.vocab; ++x)
    if (d.e[x] > 0 && d.weight(x) < min_p) d.e[x] = 0.0f;
}

template <class Weight>
int64_t inverse_cdf(size_t vocab, const std::vector<double>& csum, double target, Weight weight) {
  // Chunk sums locate the chunk; a scan in index order inside it finds the token.
  double cum = 0;
  int64_t last_chunk = -1;
  for (size_t c = 0, n = csum.size(); c < n; ++c) {
    if (csum[c] <= 0) continue;
    last_chunk = int64_t(c);
    if (cum + csum[c] > target) {
      const size_t off = c * kChunk, end = std::min(vocab, off + kChunk);
      double acc = cum;
      int64_t last_positive = -1;
      for (size_t x = off; x < end; ++x) {
        const double w = weight(x);
        if (w <= 0) continue;
        acc += w;
        last_positive = int64_t(x);
        if (acc > target) return last_positive;
      }
      // Rounding: the running sum fell short of the chunk's vectorised sum.
      if (last_positive >= 0) return last_positive;
    }
    cum += csum[c];
  }
  // Rounding at the very end of the distribution: its last token of positive weight.
  for (int64_t c = last_chunk; c >= 0; --c) {
    const size_t off = size_t(c) * kChunk, end = std::min(vocab, off + kChunk);
    for (size_t x = end; x-- > off;)
      if (weight(x) > 0) return int64_t(x);
  }
  return -1;
}

}  // namespace

int64_t build_distribution(const float* z, size_t vocab, const SamplingParams& sp, float* e,
                           bool materialize_greedy, Distribution& d) {
  const simd::Kernels& k = simd::kernels();
  const size_t chunks = chunk_count(vocab);
  d.vocab = vocab;
  d.e = e;
  d.scale.resize(chunks);
  d.csum.resize(chunks);
  d.greedy = sp.temperature == 0;

  // Pass over the logits, chunk by chunk: chunk maximum (and a finiteness check), then,
  // with the chunk still in L1, the exponentials relative to that maximum.
  const double t = sp.temperature;
  const float inv_t = d.greedy ? 1.0f : float(std::min(1.0 / t, double(FLT_MAX)));
  float zmax = -FLT_MAX;
  bool bad = false;
  for (size_t c = 0; c < chunks; ++c) {
    const size_t off = c * kChunk, len = std::min(kChunk, vocab - off);
    const float m = k.max(z + off, len, &bad);
    if (bad) {
      for (size_t x = off; x < off + len; ++x)
        if (!std::isfinite(z[x])) return int64_t(x);
    }
    zmax = std::max(zmax, m);
    d.scale[c] = m;  // chunk maximum for now
    if (!d.greedy) d.csum[c] = double(k.exp_sum(z + off, len, m, inv_t, e + off));
  }
  for (size_t c = 0; c < chunks; ++c) {
    if (float(d.scale[c]) == zmax) {
      const size_t off = c * kChunk, len = std::min(kChunk, vocab - off);
      for (size_t x = off; x < off + len; ++x)
        if (z[x] == zmax) {
          d.argmax = int32_t(x);
          break;
        }
      break;
    }
  }

  if (d.greedy) {
    d.weights = materialize_greedy;
    d.total = 1;
    if (materialize_greedy) {
      std::memset(e, 0, vocab * sizeof(float));
      e[d.argmax] = 1.0f;
      for (size_t c = 0; c < chunks; ++c) {
        d.scale[c] = 1;
        d.csum[c] = c == size_t(d.argmax) / kChunk ? 1 : 0;
      }
    }
    return -1;
  }

  d.weights = true;
  d.total = 0;
  for (size_t c = 0; c < chunks; ++c) {
    d.scale[c] = std::exp((d.scale[c] - double(zmax)) / t);
    d.csum[c] *= d.scale[c];
    d.total += d.csum[c];
  }

  const bool top_k = sp.top_k >= 1 && size_t(sp.top_k) < vocab;
  const bool top_p = sp.top_p < 1;
  const bool min_p = sp.min_p > 0;
  if (top_k || top_p || min_p) {
    std::vector<int32_t>& cand = workspace().candidates;
    if (top_k) {
      apply_top_k(z, zmax, inv_t, size_t(sp.top_k), d, cand);
      recompute_sums(d);
    }
    if (top_p) {
      apply_top_p(z, zmax, inv_t, sp.top_p, d, cand);
      if (min_p) recompute_sums(d);  // min-p does not need the sums
    }
    if (min_p) apply_min_p(sp.min_p, d);
    recompute_sums(d);
  }
  return -1;
}

int32_t sample_distribution(const Distribution& d, double u) {
  if (!d.weights) return d.argmax;
  const int64_t x = inverse_cdf(d.vocab, d.csum, u * d.total, [&](size_t x) { return d.weight(x); });
  return x >= 0 ? int32_t(x) : d.argmax;  // the argmax always has weight 1
}

PairStats pair_stats(const Distribution& p, const Distribution& q, std::vector<double>& resid_csum) {
  const simd::Kernels& k = simd::kernels();
  const size_t chunks = p.csum.size();
  resid_csum.resize(chunks);
  PairStats s;
  for (size_t c = 0; c < chunks; ++c) {
    const size_t off = c * kChunk, len = std::min(kChunk, p.vocab - off);
    const float a = float(p.scale[c] / p.total), b = float(q.scale[c] / q.total);
    float mn = 0, rs = 0;
    if (p.csum[c] > 0 || q.csum[c] > 0) k.min_resid(p.e + off, q.e + off, len, a, b, &mn, &rs);
    s.min_sum += mn;
    resid_csum[c] = rs;
    s.resid_total += rs;
  }
  return s;
}

int32_t sample_residual(const Distribution& p, const Distribution& q,
                        const std::vector<double>& resid_csum, double resid_total, double u) {
  const int64_t x = inverse_cdf(p.vocab, resid_csum, u * resid_total, [&](size_t x) {
    const double r = p.prob(x) - q.prob(x);
    return r > 0 ? r : 0.0;
  });
  // A residual that is positive only in float rounding: p itself (p is then ~ q).
  return x >= 0 ? int32_t(x) : sample_distribution(p, u);
}

}  // namespace specula
