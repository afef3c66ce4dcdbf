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

// min-p: keeps tokens with w(x) >= min_p * w(argmax).
void apply_min_p(double min_p, Distribution& d) {
  const double cut = min_p * d.weight(size_t(d.argmax));
  for (size_t x = 0; x < d.vocab; ++x)
    if (d.e[x] > 0 && d.weight(x) < cut) d.e[x] = 0.0f;
}

constexpr size_t kBlock = 256;  // second level of the inverse-CDF search

// The smallest x with sum_{y <= x} w(y) > target, searched by chunk (csum), then by
// 256-token block (block_sum(off, len), vectorised), then token by token (weight(x),
// double). Float rounding can make a level's running sum fall short of the level
// above; the search then takes the last unit with positive mass, so it never returns a
// token of weight 0. Returns -1 only if no token has positive weight.
template <class BlockSum, class Weight>
int64_t inverse_cdf(size_t vocab, const std::vector<double>& csum, double target, BlockSum block_sum,
                    Weight weight) {
  double cum = 0, before_last = 0;
  int64_t chunk = -1, last = -1;
  for (size_t c = 0, n = csum.size(); c < n; ++c) {
    if (csum[c] <= 0) continue;
    last = int64_t(c);
    before_last = cum;
    if (cum + csum[c] > target) {
      chunk = last;
      break;
    }
    cum += csum[c];
  }
  if (chunk < 0) {
    if (last < 0) return -1;
    chunk = last;
    cum = before_last;
  }
  const size_t off = size_t(chunk) * kChunk, end = std::min(vocab, off + kChunk);
  int64_t block = -1, last_block = -1;
  before_last = cum;
  for (size_t blk = off; blk < end; blk += kBlock) {
    const double s = block_sum(blk, std::min(kBlock, end - blk));
    if (s <= 0) continue;
    last_block = int64_t(blk);
    before_last = cum;
    if (cum + s > target) {
      block = last_block;
      break;
    }
    cum += s;
  }
  if (block < 0) {
    block = last_block < 0 ? int64_t(off) : last_block;
    cum = last_block < 0 ? cum : before_last;
  }
  const size_t bend = last_block < 0 ? end : std::min(end, size_t(block) + kBlock);
  int64_t last_positive = -1;
  for (size_t x = size_t(block); x < bend; ++x) {
    const double w = weight(x);
    if (w <= 0) continue;
    cum += w;
    last_positive = int64_t(x);
    if (cum > target) return last_positive;
  }
  if (last_positive >= 0) return last_positive;
  // No positive weight where the sums pointed (rounding of tiny masses): the last
  // token of positive weight anywhere.
  for (size_t x = vocab; x-- > 0;)
    if (weight(x) > 0) return int64_t(x);
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

  const double t = sp.temperature;
  const float inv_t = d.greedy ? 1.0f : float(std::min(1.0 / t, double(FLT_MAX)));
  float zmax = -FLT_MAX;
  size_t zmax_chunk = 0;  // first chunk holding the row maximum
  bool bad = false;
  // The kernels' non-finite flag may fire for huge finite logits: confirm exactly.
  auto first_bad = [&](size_t off, size_t len) -> int64_t {
    bad = false;
    for (size_t x = off; x < off + len; ++x)
      if (!std::isfinite(z[x])) return int64_t(x);
    return -1;
  };
  if (d.greedy) {
    for (size_t c = 0; c < chunks; ++c) {
      const size_t off = c * kChunk, len = std::min(kChunk, vocab - off);
      const float m = k.max(z + off, len, &bad);
      if (bad) {
        if (const int64_t x = first_bad(off, len); x >= 0) return x;
      }
      if (c == 0 || m > zmax) {
        zmax = m;
        zmax_chunk = c;
      }
    }
  } else {
    // One pass over the logits: the maximum (and finiteness) and the exponentials
    // relative to a running shift, the largest maximum seen so far. A chunk whose
    // maximum exceeds the shift by more than kRedo nats is redone (from L1) with its
    // own maximum as the new shift, so exp never overflows; smaller excesses are kept.
    constexpr float kRedo = 20.0f;
    float shift = 0;
    for (size_t c = 0; c < chunks; ++c) {
      const size_t off = c * kChunk, len = std::min(kChunk, vocab - off);
      float m, sum;
      if (c == 0) {
        m = k.max(z, len, &bad);
        if (bad) {
          if (const int64_t x = first_bad(0, len); x >= 0) return x;
        }
        shift = m;
        sum = k.exp_sum(z, len, shift, inv_t, e);
      } else {
        sum = k.max_exp_sum(z + off, len, shift, inv_t, e + off, &m, &bad);
        if (bad) {
          if (const int64_t x = first_bad(off, len); x >= 0) return x;
        }
        if ((m - shift) * inv_t > kRedo) {
          shift = m;
          sum = k.exp_sum(z + off, len, shift, inv_t, e + off);
        }
      }
      if (c == 0 || m > zmax) {
        zmax = m;
        zmax_chunk = c;
      }
      d.scale[c] = shift;  // the chunk's shift for now
      d.csum[c] = double(sum);
    }
  }
  d.z = z;
  d.zmax = zmax;
  d.zmax_chunk = zmax_chunk;
  // The argmax is needed for greedy rows and min-p; otherwise found only on demand.
  d.argmax = d.greedy || sp.min_p > 0 ? d.find_argmax() : -1;

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
      if (top_p) recompute_sums(d);  // top-p cuts by the mass left after top-k
    }
    if (top_p) apply_top_p(z, zmax, inv_t, sp.top_p, d, cand);
    if (min_p) apply_min_p(sp.min_p, d);  // relative to the argmax's weight: no sums needed
    recompute_sums(d);
  }
  return -1;
}

int32_t Distribution::find_argmax() const {
  if (argmax >= 0) return argmax;
  for (size_t x = zmax_chunk * kChunk, end = std::min(vocab, x + kChunk); x < end; ++x)
    if (z[x] == zmax) return int32_t(x);
  return 0;  // unreachable: zmax is an element of that chunk
}

int64_t first_nonfinite(const float* z, size_t vocab) {
  const simd::Kernels& k = simd::kernels();
  for (size_t off = 0; off < vocab; off += kChunk) {
    const size_t len = std::min(kChunk, vocab - off);
    bool bad = false;
    k.max(z + off, len, &bad);
    if (bad)
      for (size_t x = off; x < off + len; ++x)
        if (!std::isfinite(z[x])) return int64_t(x);
  }
  return -1;
}

int32_t sample_distribution(const Distribution& d, double u) {
  if (!d.weights) return d.argmax;
  const simd::Kernels& k = simd::kernels();
  const int64_t x = inverse_cdf(
      d.vocab, d.csum, u * d.total,
      [&](size_t off, size_t len) { return double(k.sum(d.e + off, len)) * d.scale[off / kChunk]; },
      [&](size_t x) { return d.weight(x); });
  return x >= 0 ? int32_t(x) : d.find_argmax();  // the argmax always has weight ~1
}

namespace {
template <class F>
void for_each_chunk_pair(const Distribution& p, const Distribution& q, F f) {
  for (size_t c = 0, n = p.csum.size(); c < n; ++c) {
    const size_t off = c * kChunk, len = std::min(kChunk, p.vocab - off);
    f(c, off, len, float(p.scale[c] / p.total), float(q.scale[c] / q.total));
  }
}
}  // namespace

double overlap(const Distribution& p, const Distribution& q) {
  const simd::Kernels& k = simd::kernels();
  double s = 0;
  for_each_chunk_pair(p, q, [&](size_t c, size_t off, size_t len, float a, float b) {
    if (p.csum[c] > 0 && q.csum[c] > 0) s += k.min_sum(p.e + off, q.e + off, len, a, b);
  });
  return s;
}

double residual_sums(const Distribution& p, const Distribution& q, std::vector<double>& resid_csum) {
  const simd::Kernels& k = simd::kernels();
  resid_csum.assign(p.csum.size(), 0.0);
  double total = 0;
  for_each_chunk_pair(p, q, [&](size_t c, size_t off, size_t len, float a, float b) {
    if (p.csum[c] > 0) total += resid_csum[c] = k.resid_sum(p.e + off, q.e + off, len, a, b);
  });
  return total;
}

int32_t sample_residual(const Distribution& p, const Distribution& q,
                        const std::vector<double>& resid_csum, double resid_total, double u) {
  const simd::Kernels& k = simd::kernels();
  auto fa = [&](size_t off) { return float(p.scale[off / kChunk] / p.total); };
  auto fb = [&](size_t off) { return float(q.scale[off / kChunk] / q.total); };
  const int64_t x = inverse_cdf(
      p.vocab, resid_csum, u * resid_total,
      [&](size_t off, size_t len) { return double(k.resid_sum(p.e + off, q.e + off, len, fa(off), fb(off))); },
      [&](size_t x) {
        const size_t c = x / kChunk;
        const double r = double(p.e[x]) * (p.scale[c] / p.total) - double(q.e[x]) * (q.scale[c] / q.total);
        return r > 0 ? r : 0.0;
      });
  // A residual that is positive only in float rounding: p itself (p is then ~ q).
  return x >= 0 ? int32_t(x) : sample_distribution(p, u);
}

}  // namespace specula
